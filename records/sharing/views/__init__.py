"""The sharing pages: the patient's grants, access requests and notices, break-glass."""
