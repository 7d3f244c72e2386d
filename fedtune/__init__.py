"""fedtune: federated fine-tuning of BERT-family text classifiers on Flower."""

from fedtune.config import Scenario, ScenarioError, load_scenario

__all__ = ["Scenario", "ScenarioError", "load_scenario"]
__version__ = "0.1.0"
