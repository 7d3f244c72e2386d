"""Scenario files: typed sections, validation with one-line errors, and `--set` overrides.

`base` (sections, plugin sections), `sections` and `privacy` (what a scenario holds),
`scenario` (the whole, with the checks that span sections), `loading` (files, overrides)."""

from fedtune.config.base import MAX_SEED, MAX_WAIT_SECONDS, PluginSection, ScenarioError, Section
from fedtune.config.loading import (
    SCENARIO_DIR,
    apply_overrides,
    load_scenario,
    parse_override,
    resolve_scenario_path,
    scenario_from_dict,
    scenario_from_run_config,
)
from fedtune.config.privacy import DPConfig, DPSGDConfig, PrivacyConfig, SecAggConfig
from fedtune.config.scenario import Scenario
from fedtune.config.sections import (
    AttackConfig,
    ClientResources,
    CodecConfig,
    DataConfig,
    FaultsConfig,
    FederationConfig,
    FederationNodes,
    LabelSkewSettings,
    ModelConfig,
    NumericFeature,
    OutputConfig,
    PartitionConfig,
    PeftSettings,
    TabularConfig,
    TrainingConfig,
    ValidationConfig,
)

__all__ = [
    "MAX_SEED",
    "MAX_WAIT_SECONDS",
    "SCENARIO_DIR",
    "AttackConfig",
    "ClientResources",
    "CodecConfig",
    "DPConfig",
    "DPSGDConfig",
    "DataConfig",
    "FaultsConfig",
    "FederationConfig",
    "FederationNodes",
    "ModelConfig",
    "NumericFeature",
    "OutputConfig",
    "PartitionConfig",
    "PeftSettings",
    "PluginSection",
    "PrivacyConfig",
    "Scenario",
    "ScenarioError",
    "SecAggConfig",
    "Section",
    "TabularConfig",
    "LabelSkewSettings",
    "TrainingConfig",
    "ValidationConfig",
    "apply_overrides",
    "load_scenario",
    "parse_override",
    "resolve_scenario_path",
    "scenario_from_dict",
    "scenario_from_run_config",
]
