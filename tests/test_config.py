"""The one check of each option value that several commands share (lungtumor.config)."""

from __future__ import annotations

import pytest

from lungtumor.config import check_min_lesion_score
from lungtumor.errors import ConfigError


@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan"), float("inf"), True, "0.5"])
def test_min_lesion_score_outside_0_1_is_refused(value) -> None:
    with pytest.raises(ConfigError, match="--min-lesion-score"):
        check_min_lesion_score(value)
