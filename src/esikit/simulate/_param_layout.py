"""Order of the scalars in :meth:`esikit.simulate.nmm.JansenRitParams.scalar_vector`.

Both kernels read the parameter vector by these indices; they live here, apart from
:mod:`.nmm`, so the compiled kernel (:mod:`._nmm_numba`) and the reference do not
import each other.
"""

P_B, P_A_RATE, P_B_RATE, P_V0, P_NU_MAX, P_R = 0, 1, 2, 3, 4, 5
P_J, P_A1, P_A2, P_A3, P_A4, P_MU = 6, 7, 8, 9, 10, 11
P_C_MIN, P_C_MAX, P_C_MID, P_C_R, P_C_A = 12, 13, 14, 15, 16
P_DT, P_NOISE = 17, 18
N_PARAMS = 19
