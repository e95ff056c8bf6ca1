"""Central differential privacy through Flower's wrapper, with the budget accounted.

DifferentialPrivacyServerSideFixedClipping clips every node's update to a fixed norm and adds
Gaussian noise (σ·C/n) to the mean. Flower's RdpAccountant (Google's dp-accounting behind it)
composes one Gaussian release per aggregated round; with no sampling amplification (every node
takes part in every round) the guarantee is node-level (ε, δ)-DP for the published adapter.

Flower's accounted mode needs a plain FedAvg underneath, equal node weights and exactly n
replies per round; the strategy wrapper (federation/strategy.py) gives a node that sits out or
is rejected a zero update so n holds, and a round with a missing reply is not released at all.
"""

from __future__ import annotations

from typing import Any

from federation.config import DPSection
from training.manifest import PrivacySummary

MECHANISM = "gaussian, server-side fixed clipping (Flower), node-level, RDP accounting"


def make_accountant(dp: DPSection, population: int):
    from flwr.serverapp import NeighboringRelation, PrivacyConfig, RdpAccountant, SamplingMethod

    return RdpAccountant(
        PrivacyConfig(
            target_delta=dp.target_delta,
            population_size=population,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION,
            max_epsilon=dp.max_epsilon,
        )
    )


def wrap_with_dp(strategy: Any, dp: DPSection, *, num_nodes: int, b_norm_per_w_norm: float):
    """Flower's DP wrapper around `strategy` (a plain FedAvg). `dp.clipping_norm` is on the
    weight update ΔW; Flower clips the arrays it sees (the B tensors), hence the conversion."""
    from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping

    return DifferentialPrivacyServerSideFixedClipping(
        strategy,
        noise_multiplier=dp.noise_multiplier,
        clipping_norm=dp.clipping_norm * b_norm_per_w_norm,
        num_sampled_clients=num_nodes,
        accountant=make_accountant(dp, num_nodes),
    )


def privacy_summary(dp: DPSection, accountant: Any | None) -> PrivacySummary:
    if not dp.enabled or accountant is None:
        return PrivacySummary(dp=False)
    releases = accountant.num_releases
    epsilon = accountant.get_privacy_spent().epsilon if releases else 0.0
    return PrivacySummary(
        dp=True,
        epsilon=float(epsilon),
        delta=dp.target_delta,
        mechanism=MECHANISM,
        noise_multiplier=dp.noise_multiplier,
        clipping_norm=dp.clipping_norm,
        releases=releases,
        accountant="rdp (flwr.serverapp.RdpAccountant)",
    )
