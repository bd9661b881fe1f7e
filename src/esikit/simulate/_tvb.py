"""TVB itself, configured as DeepSIF's ``generate_tvb_data.py``: the reference the
integrators are compared with (optional: needs tvb-library, the ``tvb`` extra)."""

from __future__ import annotations

import numpy as np

from .nmm import JansenRitParams


def build_tvb_simulator(weights: np.ndarray, tract_lengths: np.ndarray, params: JansenRitParams | None = None,
                        excited_node: int = 0):
    """A configured ``tvb.simulator.simulator.Simulator`` with a raw monitor.

    Parameters
    ----------
    weights, tract_lengths : array, shape (N, N)
        Connectome (TVB's convention), tract lengths in mm.
    params : JansenRitParams, optional
        Model, coupling and noise settings (default: DeepSIF's, setting 0).
    excited_node : int
        Node with ``A_excited``.

    Raises
    ------
    ImportError
        When tvb-library is not installed.
    """
    from tvb.datatypes import connectivity
    from tvb.simulator import coupling, integrators, models, monitors, noise, simulator

    p = JansenRitParams() if params is None else params
    n = weights.shape[0]
    conn = connectivity.Connectivity(weights=weights, tract_lengths=tract_lengths, centres=np.zeros((n, 3)),
                                     region_labels=np.array([f"r{i}" for i in range(n)]),
                                     speed=np.array([p.speed]))
    conn.configure()
    A = np.full(n, p.A)
    A[excited_node] = p.A_excited
    model = models.JansenRit(A=A, mu=np.array([p.mu]), v0=np.array([p.v0]),
                             p_max=np.array([p.p_max]), p_min=np.array([p.p_min]))
    sigma = np.zeros(6)
    sigma[4] = p.nsig
    return simulator.Simulator(
        model=model, connectivity=conn,
        coupling=coupling.SigmoidalJansenRit(a=np.array([p.coupling_a]), r=np.array([p.coupling_r])),
        integrator=integrators.HeunStochastic(dt=0.5, noise=noise.Additive(nsig=sigma)),
        monitors=(monitors.Raw(),)).configure()
