"""Butcher tableaus of the explicit Runge-Kutta methods, as plain data.

A tableau is all the generic stepper in :mod:`neuralode.solvers.rk` needs: adding a method means adding
an entry to :data:`TABLEAUS`. Coefficients given as exact rationals are written as :class:`Fraction` so
the invariants (row sums, weight sums) hold to rounding; the rest are the published decimal values.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # plain data: the method names load without torch
    import torch

Number = float | Fraction
Interpolation = Literal["polynomial", "hermite"]


@dataclass(frozen=True)
class ButcherTableau:
    """An explicit Runge-Kutta method ``c``, ``a`` (strictly lower triangular), ``b``.

    ``b_error`` are the weights of the embedded error estimate (``b - b_low``, so they sum to 0);
    ``None`` for fixed-step methods. ``b_error2``: optional second, lower-order estimate (DOP853's
    3rd-order one); the step's error is then ``e**2 / sqrt(e**2 + 0.01 * e2**2)``, which behaves like an
    estimate of the method's own order. ``error_order`` is the order of the local error the (combined)
    estimate measures (the step-size controller's exponent is ``1 / error_order``). ``fsal``: the last stage is
    evaluated at ``(t + h, y_new)``, so it is the first stage of the next step. ``reuse_last_stage``: the last
    stage (at ``c = 1``) becomes the next step's first stage although its point ``y0 + h * a[-1] @ k`` is only
    an order ``order - 1`` approximation of ``y_new`` (torchdiffeq's adaptive_heun and fehlberg2): that point
    is ``O(h**order)`` from ``y_new``, so the stage it feeds errs by as much times ``h`` and the method keeps
    its order at one evaluation of ``f`` per step less. ``dense`` holds the continuous extension
    ``b_i(theta) = sum_j dense[i][j] * theta**(j + 1)`` of order ``dense_order`` where the method has one; a
    row beyond the stages multiplies ``f(t + h, y_new)``, which a method without FSAL evaluates anyway for
    the next step. ``interpolation`` says how outputs between steps are produced: ``polynomial`` (``dense``)
    or ``hermite`` (cubic Hermite from both endpoint derivatives; enough for order <= 3).
    """

    name: str
    order: int
    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    b_error: tuple[float, ...] | None = None
    b_error2: tuple[float, ...] | None = None
    error_order: int | None = None
    fsal: bool = False
    dense: tuple[tuple[float, ...], ...] | None = None
    interpolation: Interpolation = "hermite"
    reuse_last_stage: bool = False
    dense_order: int | None = None
    _cache: dict = field(default_factory=dict, compare=False, repr=False, hash=False)

    @property
    def stages(self) -> int:
        return len(self.c)

    @property
    def adaptive(self) -> bool:
        return self.b_error is not None

    def tensors(self, dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
        """Coefficients as tensors on ``device``, cached so repeated solves (and CUDA-graph capture,
        which forbids host-to-device copies) create them once."""
        key = (dtype, str(device))
        if key not in self._cache:
            import torch

            mk = lambda v: torch.tensor(v, dtype=dtype, device=device)  # noqa: E731
            out = {
                "c": mk(self.c),
                # a_rows[i] multiplies the i stage derivatives already computed.
                "a_rows": [mk(row) for row in self.a],
                "b": mk(self.b),
            }
            if self.b_error is not None:
                out["b_and_error"] = mk([self.b, self.b_error] + ([] if self.b_error2 is None else [self.b_error2]))
            if self.dense is not None:
                out["dense"] = mk(self.dense)
            self._cache[key] = out
        return self._cache[key]


def _floats(xs) -> tuple[float, ...]:
    return tuple(float(x) for x in xs)


def _make(name: str, order: int, c, a, b, b_low=None, error_order=None, fsal=False, dense=None,
          interpolation: Interpolation = "hermite", b_low2=None, reuse_last_stage=False,
          dense_order=None) -> ButcherTableau:
    rows = tuple(_floats(row) for row in a)
    diff = lambda low: None if low is None else _floats(bi - bl for bi, bl in zip(b, low))  # noqa: E731
    return ButcherTableau(name, order, _floats(c), rows, _floats(b), diff(b_low), diff(b_low2), error_order, fsal,
                          None if dense is None else tuple(_floats(r) for r in dense), interpolation,
                          reuse_last_stage, dense_order)


def _poly_mul(p: list[Number], q: list[Number]) -> list[Number]:
    out: list[Number] = [0] * (len(p) + len(q) - 1)
    for i, x in enumerate(p):
        for j, y in enumerate(q):
            out[i + j] += x * y
    return out


def _poly_from_roots(scale: Number, roots: list[Number], theta_power: int) -> list[Number]:
    """Coefficients (ascending powers of theta) of ``scale * theta**k * prod(theta - r)``."""
    p: list[Number] = [0] * theta_power + [scale]
    for r in roots:
        p = _poly_mul(p, [-r, 1])
    return p


def _dense_rows(polys: list[list[Number]]) -> list[list[Number]]:
    """Drop the constant term (every b_i(0) = 0) and pad to a common degree."""
    deg = max(len(p) for p in polys) - 1
    return [list(p[1:]) + [0] * (deg - len(p) + 1) for p in polys]


F = Fraction

# --- fixed step --------------------------------------------------------------------------------
EULER = _make("euler", 1, [0], [], [1])
MIDPOINT = _make("midpoint", 2, [0, F(1, 2)], [[F(1, 2)]], [0, 1])
# Kutta's 3/8 rule (torchdiffeq's "rk4"): same order as the classic RK4, smaller error constant.
RK4 = _make("rk4", 4, [0, F(1, 3), F(2, 3), 1],
            [[F(1, 3)], [F(-1, 3), 1], [1, -1, 1]],
            [F(1, 8), F(3, 8), F(3, 8), F(1, 8)])
# Heun's 2nd-order method (explicit trapezoid) and Heun's 3rd-order method.
HEUN2 = _make("heun2", 2, [0, 1], [[1]], [F(1, 2), F(1, 2)])
HEUN3 = _make("heun3", 3, [0, F(1, 3), F(2, 3)], [[F(1, 3)], [0, F(2, 3)]], [F(1, 4), 0, F(3, 4)])

def _quartic_dense(b: list[Number], mid: list[Number]) -> list[list[Number]]:
    """Dense rows of the quartic through ``y0``, ``y1 = y0 + h b.K``, ``y_mid = y0 + h mid.K`` (a midpoint
    estimate) and the slopes ``K[0]`` at ``t0`` and ``K[-1]`` at ``t1``: in powers of theta,
    ``h K[0] th + (h(K[-1] - 4K[0]) - 5dy + 16dm) th^2 + (h(5K[0] - 3K[-1]) + 14dy - 32dm) th^3
    + (2h(K[-1] - K[0]) - 8dy + 16dm) th^4`` with ``dy = y1 - y0`` and ``dm = y_mid - y0``."""
    last = len(b) - 1
    rows = []
    for i, (bi, mi) in enumerate(zip(b, mid)):
        first, end = int(i == 0), int(i == last)
        rows.append([first, end - 4 * first - 5 * bi + 16 * mi, 5 * first - 3 * end + 14 * bi - 32 * mi,
                     2 * (end - first) - 8 * bi + 16 * mi])
    return rows


# --- adaptive ----------------------------------------------------------------------------------
# Heun's method with Euler as the embedded estimate; the Euler point's derivative starts the next step, as in
# torchdiffeq (1 evaluation of f per step instead of 2). Outputs between steps come from torchdiffeq's quartic
# through the Euler half step (order 1 in theta, but with it a drop-in call gets torchdiffeq's outputs).
ADAPTIVE_HEUN = _make("adaptive_heun", 2, [0, 1], [[1]], [F(1, 2), F(1, 2)], b_low=[1, 0], error_order=2,
                      reuse_last_stage=True, dense=_quartic_dense([F(1, 2), F(1, 2)], [F(1, 2), 0]),
                      interpolation="polynomial", dense_order=1)

# Runge-Kutta-Fehlberg 1(2): the 2nd-order solution is propagated (as torchdiffeq does; Fehlberg propagated the
# 1st-order one, whose derivative is the last stage) and the 1st-order one is the estimate; 2 evaluations per step.
# Outputs between steps: torchdiffeq's quartic through the midpoint-rule half step.
FEHLBERG2 = _make("fehlberg2", 2, [0, F(1, 2), 1], [[F(1, 2)], [F(1, 256), F(255, 256)]],
                  [F(1, 512), F(255, 256), F(1, 512)], b_low=[F(1, 256), F(255, 256), 0], error_order=2,
                  reuse_last_stage=True, dense=_quartic_dense([F(1, 512), F(255, 256), F(1, 512)], [0, F(1, 2), 0]),
                  interpolation="polynomial", dense_order=1)

# Bogacki-Shampine 3(2), FSAL.
BOSH3 = _make("bosh3", 3, [0, F(1, 2), F(3, 4), 1],
              [[F(1, 2)], [0, F(3, 4)], [F(2, 9), F(1, 3), F(4, 9)]],
              [F(2, 9), F(1, 3), F(4, 9), 0],
              b_low=[F(7, 24), F(1, 4), F(1, 3), F(1, 8)], error_order=3, fsal=True)

# Dormand-Prince 5(4), FSAL, with Shampine's 4th-order continuous extension in Hairer's form
# y(theta) = y0 + theta*R2 + theta(1-theta)*R3 + theta^2(1-theta)*R4 + theta^2(1-theta)^2*R5, expanded
# below into one polynomial b_i(theta) per stage.
_DP5_B = [F(35, 384), 0, F(500, 1113), F(125, 192), F(-2187, 6784), F(11, 84), 0]
_DP5_D = [F(-12715105075, 11282082432), 0, F(87487479700, 32700410799), F(-10690763975, 1880347072),
          F(701980252875, 199316789632), F(-1453857185, 822651844), F(69997945, 29380423)]


def _dopri5_dense() -> list[list[Number]]:
    polys = []
    for i, (bi, di) in enumerate(zip(_DP5_B, _DP5_D)):
        first, last = int(i == 0), int(i == 6)
        r2, r3, r4 = bi, first - bi, 2 * bi - first - last
        # theta*r2 + (theta - theta^2)*r3 + (theta^2 - theta^3)*r4 + (theta^2 - 2theta^3 + theta^4)*di
        polys.append([0, r2 + r3, -r3 + r4 + di, -r4 - 2 * di, di])
    return _dense_rows(polys)


DOPRI5 = _make("dopri5", 5, [0, F(1, 5), F(3, 10), F(4, 5), F(8, 9), 1, 1],
               [[F(1, 5)],
                [F(3, 40), F(9, 40)],
                [F(44, 45), F(-56, 15), F(32, 9)],
                [F(19372, 6561), F(-25360, 2187), F(64448, 6561), F(-212, 729)],
                [F(9017, 3168), F(-355, 33), F(46732, 5247), F(49, 176), F(-5103, 18656)],
                _DP5_B[:6]],
               _DP5_B,
               # Shampine's (1986) embedded 4th-order weights, as torchdiffeq's dopri5 uses, so a drop-in call takes
               # its steps. Dormand and Prince's own (Hairer's DOPRI5, SciPy's RK45) differ in the last three.
               b_low=[F(1951, 21600), 0, F(22642, 50085), F(451, 720), F(-12231, 42400), F(649, 6300), F(1, 60)],
               error_order=5, fsal=True, dense=_dopri5_dense(), interpolation="polynomial", dense_order=4)

# Tsitouras 5(4) (2011), FSAL, with the paper's 4th-order continuous extension.
_TS5_B = [0.09646076681806523, 0.01, 0.4798896504144996, 1.379008574103742, -3.290069515436081,
          2.324710524099774, 0.0]
_TS5_ERR = [-0.00178001105222577714, -0.0008164344596567469, 0.007880878010261995, -0.1447110071732629,
            0.5823571654525552, -0.45808210592918697, 0.015151515151515152]
TSIT5 = _make("tsit5", 5, [0, 0.161, 0.327, 0.9, 0.9800255409045097, 1, 1],
              [[0.161],
               [-0.008480655492356989, 0.335480655492357],
               [2.897153057105493, -6.359448489975075, 4.3622954328695815],
               [5.325864828439257, -11.748883564062828, 7.4955393428898365, -0.09249506636175525],
               [5.86145544294642, -12.92096931784711, 8.159367898576159, -0.071584973281401,
                -0.028269050394068383],
               _TS5_B[:6]],
              _TS5_B,
              # b_low written as b - (b - b_low) so b_error is exactly the published error weights.
              b_low=[b - e for b, e in zip(_TS5_B, _TS5_ERR)],
              error_order=5, fsal=True, interpolation="polynomial", dense_order=4,
              dense=_dense_rows([
                  _poly_mul(_poly_from_roots(-1.0530884977290216, [1.3299890189751412], 1),
                            [0.7139816917074209, -1.4364028541716351, 1.0]),
                  _poly_mul(_poly_from_roots(0.1017, [], 2), [1.2949852507374631, -2.1966568338249754, 1.0]),
                  _poly_mul(_poly_from_roots(2.490627285651252793, [], 2),
                            [1.57803468208092486, -2.38535645472061657, 1.0]),
                  _poly_from_roots(-16.54810288924490272, [1.21712927295533244, 0.61620406037800089], 2),
                  _poly_from_roots(47.37952196281928122, [1.203071208372362603, 0.658047292653547382], 2),
                  _poly_from_roots(-34.87065786149660974, [1.2, 0.666666666666666667], 2),
                  _poly_from_roots(2.5, [1.0, 0.6], 2),
              ]))

# Dormand-Prince 8(5,3) in Hairer's DOP853 form: 12 stages, 8th-order solution, 5th- and 3rd-order error
# estimators combined.
_DP8_C = [0.0, 0.526001519587677318785587544488e-01, 0.789002279381515978178381316732e-01,
          0.118350341907227396726757197510, 0.281649658092772603273242802490, F(1, 3), 0.25,
          F(4, 13), F(127, 195), 0.6, F(6, 7), 1.0]
_DP8_A = [
    [5.26001519587677318785587544488e-2],
    [1.97250569845378994544595329183e-2, 5.91751709536136983633785987549e-2],
    [2.95875854768068491816892993775e-2, 0, 8.87627564304205475450678981324e-2],
    [2.41365134159266685502369798665e-1, 0, -8.84549479328286085344864962717e-1,
     9.24834003261792003115737966543e-1],
    [3.7037037037037037037037037037e-2, 0, 0, 1.70828608729473871279604482173e-1,
     1.25467687566822425016691814123e-1],
    [3.7109375e-2, 0, 0, 1.70252211019544039314978060272e-1, 6.02165389804559606850219397283e-2,
     -1.7578125e-2],
    [3.70920001185047927108779319836e-2, 0, 0, 1.70383925712239993810214054705e-1,
     1.07262030446373284651809199168e-1, -1.53194377486244017527936158236e-2,
     8.27378916381402288758473766002e-3],
    [6.24110958716075717114429577812e-1, 0, 0, -3.36089262944694129406857109825,
     -8.68219346841726006818189891453e-1, 2.75920996994467083049415600797e1,
     2.01540675504778934086186788979e1, -4.34898841810699588477366255144e1],
    [4.77662536438264365890433908527e-1, 0, 0, -2.48811461997166764192642586468,
     -5.90290826836842996371446475743e-1, 2.12300514481811942347288949897e1,
     1.52792336328824235832596922938e1, -3.32882109689848629194453265587e1,
     -2.03312017085086261358222928593e-2],
    [-9.3714243008598732571704021658e-1, 0, 0, 5.18637242884406370830023853209,
     1.09143734899672957818500254654, -8.14978701074692612513997267357,
     -1.85200656599969598641566180701e1, 2.27394870993505042818970056734e1,
     2.49360555267965238987089396762, -3.0467644718982195003823669022],
    [2.27331014751653820792359768449, 0, 0, -1.05344954667372501984066689879e1,
     -2.00087205822486249909675718444, -1.79589318631187989172765950534e1,
     2.79488845294199600508499808837e1, -2.85899827713502369474065508674,
     -8.87285693353062954433549289258, 1.23605671757943030647266201528e1,
     6.43392746015763530355970484046e-1],
]
_DP8_B = [5.42937341165687622380535766363e-2, 0, 0, 0, 0, 4.45031289275240888144113950566,
          1.89151789931450038304281599044, -5.8012039600105847814672114227,
          3.1116436695781989440891606237e-1, -1.52160949662516078556178806805e-1,
          2.01365400804030348374776537501e-1, 4.47106157277725905176885569043e-2]
_DP8_ERR = [0.1312004499419488073250102996e-01, 0, 0, 0, 0, -0.1225156446376204440720569753e+01,
            -0.4957589496572501915214079952, 0.1664377182454986536961530415e+01,
            -0.3503288487499736816886487290, 0.3341791187130174790297318841,
            0.8192320648511571246570742613e-01, -0.2235530786388629525884427845e-01]
# DOP853's 3rd-order weights on stages 1, 9 and 12, for the second error estimate.
_DP8_B3 = [0.244094488188976377952755905512, 0, 0, 0, 0, 0, 0, 0, 0.733846688281611857341361741547, 0, 0,
           0.220588235294117647058823529412e-01]
# Dense output: DOP853's own (7th order) needs 3 extra evaluations of f per step with outputs. This 6th-order
# continuous extension needs none: its weights are on stage 1, stages 6-12 and f(t + h, y_new), the next step's
# first stage (derived by scripts/derive_dopri8_dense.py; the order conditions are checked in test_tableaus.py).
# Measured on y' = -y and Lotka-Volterra at tolerances 1e-5..1e-11: errors 1-2.6x those of DOP853's dense output,
# at 3 evaluations fewer per step that holds outputs; torchdiffeq's dopri8 interpolant errs 100-3000x more.
_DP8_DENSE = [
    [0.9516592560743875, -5.746429818742828, 16.538370285963854, -24.515056729746753,
     18.03407298130571, -5.171832968619812, -0.03648927211798905],
    [0.0] * 7,
    [0.0] * 7,
    [0.0] * 7,
    [0.0] * 7,
    [13.124724618357796, -25.97104278970529, 110.72198751601009, -240.16599189395635,
     195.2403846668519, -58.406747114805555, 9.90699788999983],
    [4.050764077234521, 34.795882227661366, -177.42569305757007, 328.52603088392783,
     -278.3841265381454, 87.2710029203941, 3.057657385812128],
    [-16.528875259866805, -11.275831017054067, 97.37270025586213, -169.24310563708084,
     161.8362632352537, -55.485786535855304, -12.476569001269407],
    [1.377422338102062, -26.140161200342504, 148.51037363988334, -321.0218882878208,
     294.17584672774717, -97.63015506155845, 1.0397262109469891],
    [-1.9233316035543093, 32.932790906992864, -188.76504343849058, 415.20910649759685,
     -384.5291904191537, 128.37530458782314, -1.4517974808768201],
    [-0.052363426347660905, 1.4862277841459612, -6.844906098362244, 8.833653571996786,
     -1.536122839770984, -1.6455978583631319, -0.039525732494696125],
    [-1.1815332833954689e-14, 1.2518972403758162, -5.663344658843707, 7.377251595075037,
     -2.5037944807555355, -0.41729908012440203, 5.763861610219578e-13],
    [1.1596748417332282e-14, -1.333333333331307, 5.555555555547173, -4.9999999999916644,
     -2.3333333333328974, 3.111111111109457, -7.722711359292589e-13],
]
DOPRI8 = _make("dopri8", 8, _DP8_C, _DP8_A, _DP8_B, b_low=[b - e for b, e in zip(_DP8_B, _DP8_ERR)],
               b_low2=_DP8_B3, error_order=8, dense=_DP8_DENSE, interpolation="polynomial", dense_order=6)

TABLEAUS: dict[str, ButcherTableau] = {
    t.name: t for t in (EULER, MIDPOINT, RK4, HEUN2, HEUN3, ADAPTIVE_HEUN, FEHLBERG2, BOSH3, DOPRI5, TSIT5, DOPRI8)
}
