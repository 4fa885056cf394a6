"""The chart: visits, records and their versions, files, uploads, storage in the DAG, reading."""
