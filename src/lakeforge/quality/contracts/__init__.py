"""Data contracts: ODCS v3 files under ``contracts/``, turned into checks, diffed and drafted.

- :mod:`~lakeforge.quality.contracts.model`: the ODCS v3 contract as pydantic models, and
  which datasets and columns it binds.
- :mod:`~lakeforge.quality.contracts.loading`: reading ``contracts/*.yml`` with file and
  line in every error.
- :mod:`~lakeforge.quality.contracts.column_types`: DuckDB types, type families, widening.
- :mod:`~lakeforge.quality.contracts.enforcement`: a contract as Lakeforge checks.
- :mod:`~lakeforge.quality.contracts.changes`,
  :mod:`~lakeforge.quality.contracts.compatibility` and
  :mod:`~lakeforge.quality.contracts.rule_compatibility`: what changed between two versions
  and whether consumers keep working.
- :mod:`~lakeforge.quality.contracts.versioning`: the semantic-version bump a change needs.
- :mod:`~lakeforge.quality.contracts.draft`: a contract drafted from a live table.
"""

from __future__ import annotations

from lakeforge.quality.contracts.changes import (
    CONTRACT_LEVEL,
    Category,
    Compatibility,
    ContractChange,
    ContractDiff,
    Mode,
)
from lakeforge.quality.contracts.column_types import (
    canonical_type,
    logical_type_of,
    type_change,
    type_family,
)
from lakeforge.quality.contracts.compatibility import diff_contracts
from lakeforge.quality.contracts.draft import arrow_duckdb_types, draft_contract, profile_table
from lakeforge.quality.contracts.enforcement import ContractRule
from lakeforge.quality.contracts.loading import (
    CONTRACTS_DIR,
    contract_files,
    index_contracts,
    load_contract,
    load_contracts,
    parse_contract,
)
from lakeforge.quality.contracts.model import (
    API_VERSION,
    AuthoritativeDefinition,
    Contract,
    ContractDescription,
    CustomProperty,
    LogicalType,
    Metric,
    Pricing,
    QualityRule,
    Role,
    SchemaObject,
    SchemaProperty,
    SlaProperty,
    SupportChannel,
    Team,
    TeamMember,
)
from lakeforge.quality.contracts.versioning import (
    Bump,
    check_version_bump,
    effective_bump,
    next_version,
    parse_version,
    required_bump,
    version_bump,
)

__all__ = [
    "API_VERSION",
    "CONTRACTS_DIR",
    "CONTRACT_LEVEL",
    "AuthoritativeDefinition",
    "Bump",
    "Category",
    "Compatibility",
    "Contract",
    "ContractChange",
    "ContractDescription",
    "ContractDiff",
    "ContractRule",
    "CustomProperty",
    "LogicalType",
    "Metric",
    "Mode",
    "Pricing",
    "QualityRule",
    "Role",
    "SchemaObject",
    "SchemaProperty",
    "SlaProperty",
    "SupportChannel",
    "Team",
    "TeamMember",
    "arrow_duckdb_types",
    "canonical_type",
    "check_version_bump",
    "contract_files",
    "diff_contracts",
    "draft_contract",
    "effective_bump",
    "index_contracts",
    "load_contract",
    "load_contracts",
    "logical_type_of",
    "next_version",
    "parse_contract",
    "parse_version",
    "profile_table",
    "required_bump",
    "type_change",
    "type_family",
    "version_bump",
]
