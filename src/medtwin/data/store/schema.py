"""Tables of the store, as SQLAlchemy Core metadata shared by every backend.

Times are BIGINT microseconds since the Unix epoch (UTC): one representation
in SQLite and PostgreSQL, cheap to index and compare.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    Table,
    Text,
    UniqueConstraint,
    false,
)

metadata = MetaData()

# SQLite only auto-increments an INTEGER PRIMARY KEY.
RowId = BigInteger().with_variant(Integer(), "sqlite")

patients = Table(
    "patients",
    metadata,
    Column("id", Text, primary_key=True),
    Column("pseudonym", Text, nullable=False, unique=True),
    Column("spo2_scale", SmallInteger, nullable=False, server_default="1"),
    Column("created_us", BigInteger, nullable=False),
    Column("demographics", Text),  # AES-GCM under the patient's data key, base64
    Column("erased_us", BigInteger),
    Column("merged_into", Text),  # the surviving patient of a merge (HL7 A40)
)

observations = Table(
    "observations",
    metadata,
    Column("row_id", RowId, primary_key=True, autoincrement=True),
    Column("source", Text, nullable=False),
    Column("source_id", Text, nullable=False),
    Column("version", Integer, nullable=False),
    Column("patient_id", Text, nullable=False),
    Column("system", Text, nullable=False),
    Column("code", Text, nullable=False),
    Column("value_num", Float),
    Column("value_text", Text),
    Column("unit", Text, nullable=False),
    Column("effective_us", BigInteger, nullable=False),
    Column("status", Text, nullable=False),
    Column("flags", Integer, nullable=False),
    Column("received_us", BigInteger, nullable=False),
    UniqueConstraint("source", "source_id", "version", name="uq_observations_source_id"),
    Index("ix_observations_patient_code_time", "patient_id", "code", "effective_us"),
)

interventions = Table(
    "interventions",
    metadata,
    Column("row_id", RowId, primary_key=True, autoincrement=True),
    Column("source", Text, nullable=False),
    Column("source_id", Text, nullable=False),
    Column("patient_id", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("amount", Float, nullable=False),
    Column("unit", Text, nullable=False),
    Column("start_us", BigInteger, nullable=False),
    Column("duration_s", Float, nullable=False),
    Column("drug", Text),
    Column("route", Text),
    Column("received_us", BigInteger, nullable=False),
    # When the source withdrew it (a FHIR update, deletion or entered-in-error): kept
    # for the record, no longer a model input.
    Column("retracted_us", BigInteger),
    UniqueConstraint("source", "source_id", name="uq_interventions_source_id"),
    Index("ix_interventions_patient_time", "patient_id", "start_us"),
)

derived = Table(
    "derived",
    metadata,
    Column("row_id", RowId, primary_key=True, autoincrement=True),
    Column("patient_id", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("computed_us", BigInteger, nullable=False),
    Column("value_num", Float),
    Column("payload", Text, nullable=False),
    Index("ix_derived_patient_name_time", "patient_id", "name", "computed_us"),
)

quarantine = Table(
    "quarantine",
    metadata,
    Column("row_id", RowId, primary_key=True, autoincrement=True),
    Column("received_us", BigInteger, nullable=False),
    Column("channel", Text, nullable=False),
    Column("source", Text),
    Column("location", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("payload", Text, nullable=False),
    Column("resolved_us", BigInteger),  # a replay took it in
    Index("ix_quarantine_received", "received_us"),
)

users = Table(
    "users",
    metadata,
    Column("username", Text, primary_key=True),
    Column("password_hash", Text, nullable=False),
    Column("role", Text, nullable=False),
    Column("care_team", Text),
    Column("disabled", Boolean, nullable=False, server_default="0"),
    Column("created_us", BigInteger, nullable=False),
    Column("password_changed_us", BigInteger, nullable=False),
)

care_team_patients = Table(
    "care_team_patients",
    metadata,
    Column("team", Text, primary_key=True),
    Column("patient_id", Text, primary_key=True),
    Index("ix_care_team_patients_patient", "patient_id"),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("key_id", Text, primary_key=True),
    Column("key_hash", Text, nullable=False),
    Column("owner", Text, nullable=False),
    Column("role", Text, nullable=False),
    Column("sources", Text, nullable=False),  # JSON list of the device/system sources it owns
    Column("care_team", Text),  # patients first seen from this key join this team
    Column("created_us", BigInteger, nullable=False),
    Column("revoked_us", BigInteger),
)

refresh_tokens = Table(
    "refresh_tokens",
    metadata,
    Column("jti", Text, primary_key=True),
    Column("username", Text, nullable=False),
    Column("expires_us", BigInteger, nullable=False),
    Column("revoked_us", BigInteger),
)

audit = Table(
    "audit",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("at_us", BigInteger, nullable=False),
    Column("actor", Text, nullable=False),
    Column("role", Text, nullable=False),
    Column("patient", Text),
    Column("action", Text, nullable=False),
    Column("outcome", Text, nullable=False),
    Column("address", Text),
    Column("priority", Text, nullable=False),
    Column("detail", Text, nullable=False),
    Column("prev_hash", Text, nullable=False),
    Column("hash", Text, nullable=False),
    Index("ix_audit_patient", "patient", "at_us"),
)

patient_keys = Table(
    "patient_keys",
    metadata,
    Column("patient_id", Text, primary_key=True),
    Column("wrapped_key", Text, nullable=False),  # the data key, wrapped by the keyring
    Column("created_us", BigInteger, nullable=False),
)

blind_index = Table(
    "blind_index",
    metadata,
    Column("patient_id", Text, primary_key=True),
    Column("kind", Text, primary_key=True),
    Column("digest", Text, primary_key=True),
    Index("ix_blind_index_lookup", "kind", "digest"),
)

consents = Table(
    "consents",
    metadata,
    Column("id", Text, primary_key=True),
    Column("patient_id", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("rules", Text, nullable=False),
    Column("resource", Text, nullable=False),
    Column("updated_us", BigInteger, nullable=False),
    Index("ix_consents_patient", "patient_id"),
)

privacy_budgets = Table(
    "privacy_budgets",
    metadata,
    Column("researcher", Text, primary_key=True),
    Column("epsilon_limit", Float, nullable=False),
    Column("epsilon_spent", Float, nullable=False),
)

# Columns of observations in the order of Observation's fields, then received_us.
OBSERVATION_COLUMNS = (
    "source",
    "source_id",
    "patient_id",
    "system",
    "code",
    "value_num",
    "value_text",
    "unit",
    "effective_us",
    "status",
    "version",
    "flags",
    "received_us",
)

fhir_resources = Table(
    "fhir_resources",
    metadata,
    Column("resource_type", Text, primary_key=True),
    Column("id", Text, primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("last_updated_us", BigInteger, nullable=False),
    Column("patient_id", Text),
    Column("deleted", Boolean, nullable=False, server_default=false()),
    Column("content", Text, nullable=False),  # sealed JSON as received
    Index("ix_fhir_resources_patient", "patient_id"),
)

fhir_search = Table(
    "fhir_search",
    metadata,
    Column("resource_type", Text, primary_key=True),
    Column("param", Text, primary_key=True),
    Column("value", Text, primary_key=True),  # personal values as blind-index digests
    Column("id", Text, primary_key=True),
    Index("ix_fhir_search_resource", "resource_type", "id"),
    sqlite_with_rowid=False,  # every column is in the key (migration 0011)
)

fhir_bundles = Table(
    "fhir_bundles",
    metadata,
    Column("digest", Text, primary_key=True),
    Column("received_us", BigInteger, nullable=False),
    Column("response", Text, nullable=False),
)

hl7_messages = Table(
    "hl7_messages",
    metadata,
    Column("sender", Text, primary_key=True),
    Column("control_id", Text, primary_key=True),
    Column("digest", Text, primary_key=True),
    Column("received_us", BigInteger, nullable=False),
    Column("ack_code", Text, nullable=False),
)

device_bindings = Table(
    "device_bindings",
    metadata,
    Column("row_id", RowId, primary_key=True, autoincrement=True),
    Column("device_id", Text, nullable=False),
    Column("patient_id", Text, nullable=False),
    Column("from_us", BigInteger, nullable=False),
    Column("to_us", BigInteger),
    Column("created_us", BigInteger, nullable=False),
    Index("ix_device_bindings_device", "device_id", "from_us"),
)

code_mappings = Table(
    "code_mappings",
    metadata,
    Column("source_system", Text, primary_key=True),
    Column("local_code", Text, primary_key=True),
    Column("code", Text, nullable=False),
    Column("unit", Text),
)

# Keyed by the observation's row id, not its (source, source_id, version): rows come in
# row-id order, so a batch appends to one index instead of writing as many pages as the
# observations' key index again (a quarter of an HL7 group commit's pages, measured).
observation_origins = Table(
    "observation_origins",
    metadata,
    Column("observation_id", RowId, primary_key=True, autoincrement=False),
    Column("channel", Text, nullable=False),  # api, file, fhir, mllp, mqtt
    Column("message", Text, nullable=False),  # request id, bundle, sender|control id, topic
    Column("entry", Text),  # the item within the message: items[3], Bundle.entry[2], OBX[4]
    Column("conditioning", Text),  # JSON: raw value, calibration, detectors (if conditioned)
)

module_results = Table(
    "module_results",
    metadata,
    Column("fingerprint", Text, primary_key=True),
    Column("module", Text, nullable=False),
    Column("version", Text, nullable=False),
    Column("patient_id", Text, nullable=False),
    Column("computed_us", BigInteger, nullable=False),
    Column("outputs", Text, nullable=False),  # JSON {output: number or null}
    Column("parameters", Text, nullable=False),  # JSON, as fingerprinted
    Index("ix_module_results_patient", "patient_id", "module", "computed_us"),
)

module_inputs = Table(
    "module_inputs",
    metadata,
    Column("fingerprint", Text, primary_key=True),
    Column("position", Integer, primary_key=True),
    Column("input", Text, nullable=False),  # the module's name for the input
    Column("kind", Text, nullable=False),  # observation, result or attribute
    Column("source", Text),  # observation: (source, source_id, version)
    Column("source_id", Text),
    Column("version", Integer),
    Column("upstream", Text),  # result: the fingerprint it read
    Column("value", Text),  # attribute: its value
)

# ECG/PPG waveforms, one row per chunk of samples (WaveformSegment.to_row()), not per sample.
waveforms = Table(
    "waveforms",
    metadata,
    Column("row_id", RowId, primary_key=True, autoincrement=True),
    Column("source", Text, nullable=False),
    Column("source_id", Text, nullable=False),  # the sender's id of the chunk
    Column("patient_id", Text, nullable=False),
    Column("kind", Text, nullable=False),  # ppg, ecg
    Column("system", Text, nullable=False),
    Column("code", Text, nullable=False),
    Column("start_us", BigInteger, nullable=False),  # time of sample 0
    Column("end_us", BigInteger, nullable=False),  # one period after the last sample
    Column("rate_hz", Float, nullable=False),
    Column("n_samples", Integer, nullable=False),
    Column("unit", Text, nullable=False),
    Column("samples", LargeBinary, nullable=False),  # float32, byte-shuffled, zlib
    Column("received_us", BigInteger, nullable=False),
    UniqueConstraint("source", "source_id", name="uq_waveforms_source_id"),
    Index("ix_waveforms_patient_code_time", "patient_id", "code", "start_us"),
)

calibrations = Table(
    "calibrations",
    metadata,
    Column("row_id", RowId, primary_key=True, autoincrement=True),
    Column("device", Text, nullable=False),
    Column("code", Text, nullable=False),
    Column("reference", Text, nullable=False),  # the source the device was fitted against
    Column("created_us", BigInteger, nullable=False),
    Column("calibration", Text, nullable=False),  # JSON: gain, offset, n, residual_sd, ...
    Index("ix_calibrations_device", "device", "code"),
)

# Alarms (medtwin.twins.alarms): one row per alarm, updated at each transition (the audit
# trail holds every transition); at most one open (active or acknowledged) per rule+patient.
alarms = Table(
    "alarms",
    metadata,
    Column("id", Text, primary_key=True),
    Column("rule", Text, nullable=False),
    Column("patient_id", Text, nullable=False),
    Column("priority", Text, nullable=False),  # low, medium, high (IEC 60601-1-8)
    Column("title", Text, nullable=False),
    Column("status", Text, nullable=False),  # active, acknowledged, resolved
    Column("level", Integer, nullable=False),  # index into the rule's escalation chain
    Column("recipient", Text, nullable=False),  # care-team, role:..., user:...
    Column("raised_us", BigInteger, nullable=False),
    Column("escalated_us", BigInteger, nullable=False),  # when the current recipient was called
    Column("value", Float),  # the value that raised it
    Column("acknowledged_us", BigInteger),
    Column("acknowledged_by", Text),
    Column("acknowledged_reason", Text),
    Column("resolved_us", BigInteger),
    Column("resolved_by", Text),  # a user name, or "system" when the condition cleared
    Column("resolved_reason", Text),
    Index("ix_alarms_open", "status", "patient_id", "rule"),
    Index("ix_alarms_patient", "patient_id", "raised_us"),
)

alarm_suppressions = Table(
    "alarm_suppressions",
    metadata,
    Column("row_id", RowId, primary_key=True, autoincrement=True),
    Column("patient_id", Text, nullable=False),
    Column("rule", Text, nullable=False),
    Column("start_us", BigInteger, nullable=False),
    Column("end_us", BigInteger, nullable=False),
    Column("actor", Text, nullable=False),  # a user name, or "system" after a resolution
    Column("reason", Text, nullable=False),
    Index("ix_alarm_suppressions_patient", "patient_id", "rule", "end_us"),
)

# Model registry (medtwin.data.model_registry): trained models, versioned per name, and the
# log of promotions (the newest promotion of a name is the version that serves).
model_versions = Table(
    "model_versions",
    metadata,
    Column("name", Text, primary_key=True),
    Column("version", Integer, primary_key=True),  # 1, 2, 3... per name
    Column("created_us", BigInteger, nullable=False),
    Column("created_by", Text, nullable=False),
    Column("fingerprint", Text, nullable=False),  # sha256 of the training matrix and labels
    Column("features", Text, nullable=False),  # JSON list of feature names, column order
    Column("metrics", Text, nullable=False),  # JSON {metric: number}
    Column("params", Text, nullable=False),  # JSON: calibration, feature spec, ...
    Column("reference", Text, nullable=False),  # JSON: training quantile bins for drift (PSI)
    Column("model", LargeBinary, nullable=False),  # e.g. LightGBM model_to_string(), UTF-8
)

model_promotions = Table(
    "model_promotions",
    metadata,
    Column("row_id", RowId, primary_key=True, autoincrement=True),
    Column("name", Text, nullable=False),
    Column("version", Integer, nullable=False),
    Column("promoted_us", BigInteger, nullable=False),
    Column("by_user", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Index("ix_model_promotions_name", "name", "row_id"),
)

# How many served feature rows fell in each training bin, per model version and UTC day
# (bin -1: missing): the drift of what a service scored, kept across restarts.
model_serving_bins = Table(
    "model_serving_bins",
    metadata,
    Column("name", Text, primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("day", Integer, primary_key=True),  # days since 1970-01-01 UTC
    Column("feature", Integer, primary_key=True),  # column index in the model's features
    Column("bin", Integer, primary_key=True),
    Column("served", BigInteger, nullable=False),  # feature values served in the bin
)
