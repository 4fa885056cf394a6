"""The footprint: every access to a patient's data, logged on chain, shown to the patient.

``services`` holds the queries behind the page, the batches of access digests put on
chain (the audit rows are the outbox) and the proofs that a row is in a sealed block;
``views`` and ``urls`` are the patient's footprint page. It builds on the audit rows
(``records.audit``, ``AccessEvent``) and the chain; research borrows its value axis.
"""
