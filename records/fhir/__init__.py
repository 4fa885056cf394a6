"""FHIR R4 (``/fhir/r4/``): the patient's records, grants, footprint and signatures as FHIR resources."""
