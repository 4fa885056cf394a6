"""Research: de-identified, consented datasets for research institutes.

``deid`` turns records into pseudonymous rows (k-anonymity over age band and sex);
``services`` defines datasets from research grants, summarises and exports them (CSV,
FHIR R4B), each export audited and logged on chain; ``views`` and ``urls`` are the
research portal. It builds on the clinical records and on sharing (research grants),
never the other way.
"""
