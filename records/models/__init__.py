"""The records app's models, one module per room, gathered here for Django.

``records.models.clinical`` holds the chart (visits, records, versions, files,
wrapped keys), ``records.models.sharing`` consent (grants, requests,
break-glass, re-keying), ``records.models.footprint`` what happened to the data
(access events, notices), ``records.models.research`` datasets and exports.
The tables keep their names (``records_<model>``): moving a model between these
modules changes no schema. They sit below every room because their foreign
keys cross rooms and the access policy reads all of them (docs/architecture.md).
"""

from records.models.clinical import (
    BulkExport,
    EarlyIngest,
    KeptRecordManager,
    MedicalRecord,
    RecordFile,
    RecordKind,
    RecordVersion,
    Visit,
    WrappedKey,
)
from records.models.consortium import CardCode, Delivery
from records.models.footprint import AccessEvent, Notification
from records.models.research import ResearchDataset, ResearchExport
from records.models.sharing import (
    AccessRequest,
    BreakGlass,
    BreakGlassReason,
    Grant,
    GrantPurpose,
    GrantScope,
    PatientSecret,
    RekeyItem,
    RekeyJob,
    review_note_aad,
)

__all__ = [
    "AccessEvent",
    "AccessRequest",
    "BreakGlass",
    "BreakGlassReason",
    "BulkExport",
    "CardCode",
    "Delivery",
    "EarlyIngest",
    "Grant",
    "GrantPurpose",
    "GrantScope",
    "KeptRecordManager",
    "MedicalRecord",
    "Notification",
    "PatientSecret",
    "RecordFile",
    "RecordKind",
    "RecordVersion",
    "RekeyItem",
    "RekeyJob",
    "ResearchDataset",
    "ResearchExport",
    "Visit",
    "WrappedKey",
    "review_note_aad",
]
