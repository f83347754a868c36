"""Every knob is an environment variable with the ``DRIFT_`` prefix.

One settings object is built at the edge (CLI, app factory) and passed down, so that library code
never reads the environment itself and tests can build their own.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from responder.models.identities import Identities


class CorrelationKeyKind(StrEnum):
    CONTAINER = "container"
    POD = "pod"


class Settings(BaseSettings):
    # An empty variable means unset (compose and .env files write KEY= for "not given").
    model_config = SettingsConfigDict(env_prefix="DRIFT_", extra="ignore",
                                      populate_by_name=True, env_ignore_empty=True)

    data_dir: Path = Field(default=Path(".drift"), description="Where embedded state lives.")
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the store. Default: SQLite at $DRIFT_DATA_DIR/drift.db.",
    )
    redis_url: str | None = Field(
        default=None,
        description="Redis for correlation (and later the Celery broker). "
        "Unset: the embedded correlator in the SQL store is used.",
    )
    redis_prefix: str = Field(default="drift:", description="Prefix of every Redis key we own.")
    broker_url: str | None = Field(
        default=None, description="Celery broker. Default: DRIFT_REDIS_URL when set, else an "
        "embedded SQLite broker at $DRIFT_DATA_DIR/broker.db.")
    ingest_token: SecretStr | None = Field(default=None, description="Bearer token for intake.")
    playbooks_dir: Path = Field(default=Path("playbooks"))
    artifacts_dir: Path | None = Field(
        default=None, description="Evidence store. Default: $DRIFT_DATA_DIR/artifacts."
    )
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024, description="Intake body limit.")
    max_batch_alerts: int = Field(default=10_000, ge=1)
    correlation_key: str = Field(
        default=CorrelationKeyKind.CONTAINER.value,
        description="'container', 'pod', or a comma-separated list of output fields.",
    )
    correlation_window_seconds: float = Field(default=1800.0, gt=0)
    audit_every_alerts: int = Field(
        default=1000, ge=1, description="Aggregate alerts.received audit records per N alerts..."
    )
    audit_every_seconds: float = Field(default=60.0, gt=0, description="...or per this period.")
    sample_first: int = Field(default=20, ge=0, description="First alerts kept per incident.")
    sample_last: int = Field(default=20, ge=0, description="Last alerts kept per incident.")
    sample_budget: int = Field(
        default=100, ge=1,
        description="Alerts one write adds to the latest-alert samples of all its incidents.",
    )
    auto_migrate: bool = Field(default=True, description="Upgrade the schema on start.")
    queue: str = Field(default="drift.runs", description="Celery queue of playbook runs.")
    lease_grace_seconds: float = Field(
        default=10.0, gt=0, description="How long a step may go unclaimed, or run past its "
        "timeout, before the beat dispatches it again.")
    kube_host: str | None = Field(default=None, description="Kubernetes API URL (else "
                                  "in-cluster config, else kubeconfig).")
    kube_token: SecretStr | None = Field(default=None, description="Bearer token for kube_host.")
    kubeconfig: str | None = Field(default=None, description="Kubeconfig path (default: "
                                   "$KUBECONFIG or ~/.kube/config).")
    kube_context: str | None = Field(default=None, description="Kubeconfig context.")
    kube_timeout_seconds: float = Field(default=10.0, gt=0)
    kube_retries: int = Field(default=4, ge=0, le=10)
    dry_run: bool = Field(default=False, description="Cluster actions only say what they would "
                          "send.")
    protected_namespaces: str = Field(default="kube-system,kube-public,kube-node-lease",
                                      description="Refused unless a step allows it.")
    namespace: str | None = Field(default=None, description="The responder's own namespace "
                                  "(also protected).")
    isolate_strip_labels: str = Field(default="", description="Labels isolation removes "
                                      "(default: those its controller and Services select on).")
    slack_bot_token: SecretStr | None = Field(default=None, alias="SLACK_BOT_TOKEN",
                                              description="Bot token; unset: console notifier.")
    slack_signing_secret: SecretStr | None = Field(default=None, alias="SLACK_SIGNING_SECRET")
    slack_app_token: SecretStr | None = Field(default=None, alias="SLACK_APP_TOKEN",
                                              description="Socket Mode app-level token.")
    slack_api_url: str = Field(default="https://slack.com/api/",
                               description="Slack Web API base URL (tests point it elsewhere).")
    slack_channel: str = Field(default="#drift-alerts", description="Default prompt channel.")
    slack_namespace_channels: str = Field(
        default="", description="Per-namespace routes: 'ns=#channel,ns2=#other'.")
    identities: str = Field(
        default="", description="Who is who across transports, for the two-person rule: "
        "'alice=slack:U01ABC,os:alice; bob=slack:U02DEF,os:bob'. Unlisted principals count "
        "as people of their own.")
    slack_command_users: str = Field(
        default="", description="Who may use /drift isolate|release|evict: user ids and "
        "slack-group:<handle> entries, comma-separated.")
    slack_rate_per_second: float = Field(default=1.0, gt=0, description="New messages per "
                                         "second per channel, after the burst.")
    slack_burst: float = Field(default=10.0, ge=1, description="New messages a quiet channel "
                               "takes at once before slack_rate_per_second applies.")
    slack_digest_after: int = Field(default=20, ge=1, description="More prompts than this "
                                    "waiting in one channel: the next message is a digest "
                                    "naming them (each still gets its own prompt in turn).")
    slack_digest_interval_seconds: float = Field(default=5.0, gt=0, description="At most one "
                                                 "digest per channel this often.")
    slack_update_rate_per_minute: float = Field(default=50.0, gt=0, description="chat.update "
                                                "calls and evidence uploads per minute, whole "
                                                "workspace (Slack Tier 3).")
    slack_update_burst: float = Field(default=10.0, ge=1)
    slack_update_interval_seconds: float = Field(default=1.0, ge=0, description="One update "
                                                 "per message at most this often.")
    slack_upload_evidence: bool = Field(default=True, description="Upload evidence artifacts "
                                        "(JSON, text) into the incident message's thread.")
    slack_upload_max_bytes: int = Field(default=8 << 20, ge=0, description="Larger artifacts "
                                        "are not uploaded.")
    agent_heartbeat_seconds: float = Field(default=5.0, gt=0, description="How often a node "
                                           "agent says it is alive.")
    agent_stale_seconds: float = Field(default=20.0, gt=0, description="An agent silent this "
                                       "long is gone: its node's evidence steps fall back.")
    evidence_max_processes: int = Field(default=2000, ge=1)
    evidence_max_entries: int = Field(default=1000, ge=1, description="Diff entries listed "
                                      "(summary counts stay exact).")
    evidence_hash_file_max_bytes: int = Field(default=64 << 20, ge=0,
                                              description="Files above this are not hashed.")
    evidence_hash_total_max_bytes: int = Field(default=512 << 20, ge=0,
                                               description="Hashing budget per diff.")
    evidence_quarantine_max_bytes: int = Field(
        default=32 << 20, ge=0, description="Dropped executables up to this size are kept "
        "(mode 0400) when a step asks for quarantine.")
    registry_insecure: str = Field(default="", description="Registries (host:port) reached over "
                                   "plain HTTP, comma-separated (tests, air-gapped mirrors).")
    registry_ca_bundle: str | None = Field(default=None, description="CA bundle for registries.")
    registry_credentials: SecretStr | None = Field(
        default=None, description="A dockerconfigjson document used when the pod has no "
        "imagePullSecrets for its registry.")
    registry_max_bytes: int = Field(default=2 << 30, ge=1, description="Layer bytes one image "
                                    "comparison may download.")
    suppression_refresh_seconds: float = Field(
        default=5.0, gt=0, description="How often the intake re-reads active suppressions and "
        "writes their hit counts.")
    plugin_modules: str = Field(default="", description="Extra plug-in modules to import "
                                "(comma-separated), besides the entry point group.")

    @field_validator("identities")
    @classmethod
    def _identities_parse(cls, value: str) -> str:
        Identities.parse(value)  # refuse a bad mapping at start-up, not at the first vote
        return value

    @property
    def identity_map(self) -> Identities:
        return Identities.parse(self.identities)

    @field_validator("correlation_key")
    @classmethod
    def _key_is_known_or_fields(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("correlation_key must not be empty")
        return value

    @property
    def effective_broker_url(self) -> str:
        if self.broker_url:
            return self.broker_url
        if self.redis_url:
            return self.redis_url
        return f"sqla+sqlite:///{(self.data_dir / 'broker.db').resolve()}"

    @property
    def insecure_registry_set(self) -> set[str]:
        return {r.strip() for r in self.registry_insecure.split(",") if r.strip()}

    @property
    def protected_namespace_set(self) -> set[str]:
        names = {n.strip() for n in self.protected_namespaces.split(",") if n.strip()}
        return names | ({self.namespace} if self.namespace else set())

    @property
    def plugin_module_list(self) -> list[str]:
        return [m.strip() for m in self.plugin_modules.split(",") if m.strip()]

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'drift.db').resolve()}"

    @property
    def effective_artifacts_dir(self) -> Path:
        return self.artifacts_dir or self.data_dir / "artifacts"
