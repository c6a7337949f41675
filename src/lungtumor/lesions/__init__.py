"""Lesions of a mask and of two visits: instances, RECIST measurements, longitudinal matching, response."""
