"""Building blocks of E2Former-V2, one idea per module."""
