"""Every loss against the paper's formula written out with plain Python loops.

The reference implementations below deliberately share no code with ssl_models.losses:
they walk over rows and dimensions one scalar at a time, in float64.
"""

from __future__ import annotations

import math

import pytest
import torch

from ssl_models.losses import (
    barlow_twins_loss,
    byol_loss,
    dino_loss,
    ibot_patch_loss,
    info_nce_loss,
    koleo_loss,
    masked_mse_loss,
    mocov3_loss,
    nearest_neighbour,
    negative_cosine_similarity,
    nnclr_loss,
    nt_xent_loss,
    swav_loss,
    update_center,
    vicreg_loss,
)
from ssl_models.sinkhorn import sinkhorn


def rows(x: torch.Tensor) -> list[list[float]]:
    return x.double().tolist()


def dot(u: list[float], v: list[float]) -> float:
    return sum(a * b for a, b in zip(u, v, strict=True))


def norm(u: list[float]) -> float:
    return math.sqrt(dot(u, u))


def cos(u: list[float], v: list[float]) -> float:
    return dot(u, v) / (norm(u) * norm(v))


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def column(z: list[list[float]], j: int) -> list[float]:
    return [row[j] for row in z]


@pytest.fixture
def pair() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)


# --- NT-Xent (SimCLR) ---------------------------------------------------------------


def nt_xent_reference(z_a: torch.Tensor, z_b: torch.Tensor, t: float) -> float:
    z = rows(z_a) + rows(z_b)
    n = len(z_a)
    losses = []
    for i in range(2 * n):
        j = i + n if i < n else i - n  # the other view of the same image
        denominator = sum(math.exp(cos(z[i], z[k]) / t) for k in range(2 * n) if k != i)
        losses.append(-math.log(math.exp(cos(z[i], z[j]) / t) / denominator))
    return mean(losses)


def test_nt_xent_matches_the_formula(pair):
    z_a, z_b = pair
    for t in (0.1, 0.5):
        assert nt_xent_loss(z_a, z_b, t).item() == pytest.approx(nt_xent_reference(z_a, z_b, t), rel=1e-5)


def test_nt_xent_is_symmetric_and_ignores_batch_order_and_scale(pair):
    z_a, z_b = pair
    loss = nt_xent_loss(z_a, z_b)
    perm = torch.randperm(len(z_a))
    assert nt_xent_loss(z_b, z_a).item() == pytest.approx(loss.item(), rel=1e-5)
    assert nt_xent_loss(z_a[perm], z_b[perm]).item() == pytest.approx(loss.item(), rel=1e-5)
    assert nt_xent_loss(3 * z_a, 0.5 * z_b).item() == pytest.approx(loss.item(), rel=1e-5)


# --- InfoNCE with a queue (MoCo) -------------------------------------------------------


def info_nce_reference(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, t: float) -> float:
    losses = []
    for q_i, k_i in zip(rows(q), rows(k), strict=True):
        positive = math.exp(cos(q_i, k_i) / t)
        negatives = sum(math.exp(cos(q_i, k_j) / t) for k_j in rows(queue))
        losses.append(-math.log(positive / (positive + negatives)))
    return mean(losses)


def test_info_nce_matches_the_formula(pair):
    q, k = pair
    queue = torch.randn(11, 5, generator=torch.Generator().manual_seed(1))
    for t in (0.2, 1.0):
        assert info_nce_loss(q, k, queue, t).item() == pytest.approx(info_nce_reference(q, k, queue, t), rel=1e-5)


def test_info_nce_by_hand():
    # q . k+ = 1, q . k- = 0, t = 1: -log(e / (e + 1)) = log(1 + 1/e).
    q, k, queue = torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 5.0]])
    assert info_nce_loss(q, k, queue, temperature=1.0).item() == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-6)


def test_info_nce_invariances(pair):
    q, k = pair
    queue = torch.randn(11, 5, generator=torch.Generator().manual_seed(1))
    loss = info_nce_loss(q, k, queue).item()
    perm = torch.randperm(len(q))
    assert info_nce_loss(q[perm], k[perm], queue).item() == pytest.approx(loss, rel=1e-5)  # batch order
    assert info_nce_loss(q, k, queue[torch.randperm(11)]).item() == pytest.approx(loss, rel=1e-5)  # queue order
    assert info_nce_loss(2 * q, 7 * k, 0.3 * queue).item() == pytest.approx(loss, rel=1e-5)  # scale


def test_info_nce_without_queue_uses_the_other_keys(pair):
    q, k = pair
    t = 0.2
    expected = mean(
        [
            -math.log(math.exp(cos(q_i, rows(k)[i]) / t) / sum(math.exp(cos(q_i, k_j) / t) for k_j in rows(k)))
            for i, q_i in enumerate(rows(q))
        ]
    )
    assert info_nce_loss(q, k, None, t).item() == pytest.approx(expected, rel=1e-5)


# --- negative cosine (SimSiam) and BYOL ---------------------------------------------


def test_negative_cosine_and_byol_match_the_formulas(pair):
    p, z = pair
    cosines = [cos(u, v) for u, v in zip(rows(p), rows(z), strict=True)]
    assert negative_cosine_similarity(p, z).item() == pytest.approx(-mean(cosines), rel=1e-5)
    # BYOL: squared distance of the normalised vectors, summed over dimensions.
    distances = [sum((a / norm(u) - b / norm(v)) ** 2 for a, b in zip(u, v, strict=True)) for u, v in zip(rows(p), rows(z), strict=True)]
    assert byol_loss(p, z).item() == pytest.approx(mean(distances), rel=1e-5)


def test_cosine_losses_at_their_extremes():
    x = torch.randn(4, 8)
    assert negative_cosine_similarity(x, 2 * x).item() == pytest.approx(-1, abs=1e-6)
    assert byol_loss(x, 2 * x).item() == pytest.approx(0, abs=1e-6)
    assert byol_loss(x, -x).item() == pytest.approx(4, abs=1e-5)


# --- Barlow Twins ------------------------------------------------------------------


def barlow_twins_reference(z_a: torch.Tensor, z_b: torch.Tensor, lam: float, eps: float = 1e-5) -> float:
    za, zb = rows(z_a), rows(z_b)
    n, d = len(za), len(za[0])

    def standardised(z: list[list[float]], j: int) -> list[float]:
        col = column(z, j)
        mu = mean(col)
        var = sum((v - mu) ** 2 for v in col) / n  # biased, as BatchNorm
        return [(v - mu) / math.sqrt(var + eps) for v in col]

    sa = [standardised(za, j) for j in range(d)]
    sb = [standardised(zb, j) for j in range(d)]
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c_ij = sum(sa[i][b] * sb[j][b] for b in range(n)) / n
            loss += (1 - c_ij) ** 2 if i == j else lam * c_ij**2
    return loss


def test_barlow_twins_matches_the_formula(pair):
    z_a, z_b = pair
    for lam in (5e-3, 1.0):
        assert barlow_twins_loss(z_a, z_b, lam).item() == pytest.approx(barlow_twins_reference(z_a, z_b, lam), rel=1e-5)


def test_barlow_twins_is_zero_for_identical_decorrelated_inputs():
    # Columns of a Hadamard matrix without its constant column: zero mean, unit variance,
    # mutually orthogonal, so C = I exactly (up to the eps in the standardisation).
    h = torch.tensor([[1.0, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]])
    h = torch.kron(h, h)[:, 1:]  # (16, 15)
    z = 3 * h + 2  # scale and shift do not matter after standardisation
    assert barlow_twins_loss(z, z, eps=0.0).item() == pytest.approx(0, abs=1e-10)
    assert barlow_twins_loss(z, z).item() < 1e-3


def test_barlow_twins_invariances(pair):
    z_a, z_b = pair
    loss = barlow_twins_loss(z_a, z_b).item()
    perm = torch.randperm(len(z_a))
    assert barlow_twins_loss(z_a[perm], z_b[perm]).item() == pytest.approx(loss, rel=1e-5)
    assert barlow_twins_loss(z_b, z_a).item() == pytest.approx(loss, rel=1e-5)  # C -> C^T
    # Permuting the dimensions of both views the same way permutes C's rows and columns.
    dims = torch.randperm(z_a.shape[1])
    assert barlow_twins_loss(z_a[:, dims], z_b[:, dims]).item() == pytest.approx(loss, rel=1e-5)


# --- VICReg ------------------------------------------------------------------------


def vicreg_reference(z_a, z_b, lam=25.0, mu=25.0, nu=1.0, gamma=1.0, eps=1e-4) -> float:
    za, zb = rows(z_a), rows(z_b)
    n, d = len(za), len(za[0])
    invariance = sum((za[b][i] - zb[b][i]) ** 2 for b in range(n) for i in range(d)) / (n * d)

    def variance(z):
        hinge = []
        for j in range(d):
            col = column(z, j)
            mu_j = mean(col)
            var = sum((v - mu_j) ** 2 for v in col) / (n - 1)
            hinge.append(max(0.0, gamma - math.sqrt(var + eps)))
        return mean(hinge)

    def covariance(z):
        means = [mean(column(z, j)) for j in range(d)]
        total = 0.0
        for i in range(d):
            for j in range(d):
                if i != j:
                    c = sum((z[b][i] - means[i]) * (z[b][j] - means[j]) for b in range(n)) / (n - 1)
                    total += c**2
        return total / d

    return lam * invariance + mu * (variance(za) + variance(zb)) / 2 + nu * (covariance(za) + covariance(zb))


def test_vicreg_matches_the_formula(pair):
    z_a, z_b = pair
    z_a = 0.5 * z_a  # std below gamma so the hinge is active in some dimensions
    assert vicreg_loss(z_a, z_b).item() == pytest.approx(vicreg_reference(z_a, z_b), rel=1e-5)
    assert vicreg_loss(z_a, z_b, 1.0, 2.0, 3.0).item() == pytest.approx(vicreg_reference(z_a, z_b, 1.0, 2.0, 3.0), rel=1e-5)


def test_vicreg_by_hand():
    # Two identical, decorrelated, wide-spread views: every term is zero.
    # Columns +-2: std = 2 * sqrt(4/3) > 1, no hinge; orthogonal columns, no covariance.
    z = 2 * torch.tensor([[1.0, 1], [1, -1], [-1, 1], [-1, -1]])
    assert vicreg_loss(z, z).item() == pytest.approx(0, abs=1e-6)
    # A collapsed pair: invariance 0, std = sqrt(eps) -> variance 25 * (1 - 0.01) = 24.75.
    c = torch.ones(4, 2)
    assert vicreg_loss(c, c).item() == pytest.approx(25 * (1 - math.sqrt(1e-4)), rel=1e-5)


def test_vicreg_invariances(pair):
    z_a, z_b = pair
    loss = vicreg_loss(z_a, z_b).item()
    perm = torch.randperm(len(z_a))
    assert vicreg_loss(z_a[perm], z_b[perm]).item() == pytest.approx(loss, rel=1e-5)
    assert vicreg_loss(z_b, z_a).item() == pytest.approx(loss, rel=1e-5)
    assert vicreg_loss(z_a + 3, z_b + 3).item() == pytest.approx(loss, rel=1e-5)  # common shift


# --- masked MSE (MAE, context encoder) ---------------------------------------------------


def test_masked_mse_matches_the_formula():
    g = torch.Generator().manual_seed(2)
    pred, target = torch.randn(3, 7, 4, generator=g), torch.randn(3, 7, 4, generator=g)
    mask = (torch.rand(3, 7, generator=g) < 0.6).float()
    total, count = 0.0, 0
    for b in range(3):
        for position in range(7):
            if mask[b, position] == 1:
                total += mean([(pred[b, position, c].item() - target[b, position, c].item()) ** 2 for c in range(4)])
                count += 1
    assert masked_mse_loss(pred, target, mask).item() == pytest.approx(total / count, rel=1e-5)


def test_masked_mse_ignores_visible_positions():
    pred, target = torch.zeros(2, 4, 3), torch.zeros(2, 4, 3)
    mask = torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 0]])
    pred[0, 1:] = 100.0  # errors only where visible
    assert masked_mse_loss(pred, target, mask).item() == 0
    pred[0, 0] = torch.tensor([1.0, 2.0, 3.0])  # (1 + 4 + 9) / 3 on the one hidden patch
    assert masked_mse_loss(pred, target, mask).item() == pytest.approx(14 / 3)


# --- DINO, iBOT, KoLeo ---------------------------------------------------------------------


def softmax_row(logits: list[float], t: float) -> list[float]:
    top = max(x / t for x in logits)
    e = [math.exp(x / t - top) for x in logits]
    return [x / sum(e) for x in e]


def cross_entropy_rows(target: list[float], logits: list[float], t: float) -> float:
    """- sum_k p_k log softmax(logits / t)_k, written out."""
    log_norm = math.log(sum(math.exp(x / t) for x in logits))
    return -sum(p * (x / t - log_norm) for p, x in zip(target, logits, strict=True))


def dino_reference(student: list[torch.Tensor], teacher: list[torch.Tensor], center: torch.Tensor, ts: float, tt: float) -> float:
    c = center.double().flatten().tolist()
    terms = []
    for g, t in enumerate(teacher):
        for v, s in enumerate(student):
            if v == g:
                continue
            per_image = []
            for t_row, s_row in zip(rows(t), rows(s), strict=True):
                target = softmax_row([x - ck for x, ck in zip(t_row, c, strict=True)], tt)
                per_image.append(cross_entropy_rows(target, s_row, ts))
            terms.append(mean(per_image))
    return mean(terms)


@pytest.fixture
def dino_views() -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    student = [torch.randn(5, 7, generator=g, dtype=torch.float64) for _ in range(4)]  # 2 global + 2 local
    teacher = [torch.randn(5, 7, generator=g, dtype=torch.float64) for _ in range(2)]
    return student, teacher, torch.randn(1, 7, generator=g, dtype=torch.float64)


def test_dino_loss_matches_the_formula(dino_views):
    student, teacher, center = dino_views
    for ts, tt in ((0.1, 0.04), (0.2, 0.07)):
        got = dino_loss(student, teacher, center, ts, tt).item()
        assert got == pytest.approx(dino_reference(student, teacher, center, ts, tt), rel=1e-10)
    # Only global views: each teacher view is matched with the other student view only.
    got = dino_loss(student[:2], teacher, center, 0.1, 0.04).item()
    assert got == pytest.approx(dino_reference(student[:2], teacher, center, 0.1, 0.04), rel=1e-10)


def test_dino_loss_centring_matters_and_a_constant_shift_of_the_student_does_not(dino_views):
    student, teacher, center = dino_views
    loss = dino_loss(student, teacher, center).item()
    assert dino_loss(student, teacher, torch.zeros_like(center)).item() != pytest.approx(loss)
    # softmax ignores a constant added to a row: the centre's mean part and a student shift cancel
    assert dino_loss([s + 3 for s in student], teacher, center + 2).item() == pytest.approx(loss, rel=1e-10)


def test_dino_loss_gradient_reaches_the_student_only(dino_views):
    student, teacher, center = dino_views
    student = [s.clone().requires_grad_() for s in student]
    teacher = [t.clone().requires_grad_() for t in teacher]
    dino_loss(student, teacher, center).backward()
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in student)
    assert all(t.grad is None for t in teacher)


def test_update_center_is_an_ema_of_the_teacher_mean():
    g = torch.Generator().manual_seed(4)
    teacher, center = torch.randn(6, 5, generator=g, dtype=torch.float64), torch.randn(1, 5, generator=g, dtype=torch.float64)
    new = update_center(center, teacher, momentum=0.9)
    for k in range(5):
        column_mean = mean([teacher[b, k].item() for b in range(6)])
        assert new[0, k].item() == pytest.approx(0.9 * center[0, k].item() + 0.1 * column_mean, rel=1e-12)
    assert torch.equal(update_center(center, teacher[:0], 0.9), center)  # no rows: kept


def test_ibot_patch_loss_matches_the_formula():
    g = torch.Generator().manual_seed(5)
    batch, length, k = 4, 6, 5
    mask = torch.rand(batch, length, generator=g) < 0.5
    mask[0] = False  # an image with nothing hidden counts as 0 in the mean over images
    mask[1, 0] = True
    m = int(mask.sum())
    student, teacher = torch.randn(m, k, generator=g, dtype=torch.float64), torch.randn(m, k, generator=g, dtype=torch.float64)
    center = torch.randn(1, k, generator=g, dtype=torch.float64)
    c = center.flatten().tolist()
    row, per_image = 0, []
    for b in range(batch):
        losses = []
        for position in range(length):
            if mask[b, position]:
                target = softmax_row([x - ck for x, ck in zip(rows(teacher)[row], c, strict=True)], 0.04)
                losses.append(cross_entropy_rows(target, rows(student)[row], 0.1))
                row += 1
        per_image.append(mean(losses) if losses else 0.0)
    got = ibot_patch_loss(student, teacher, mask, center, 0.1, 0.04).item()
    assert got == pytest.approx(mean(per_image), rel=1e-10)


def koleo_reference(x: torch.Tensor, eps: float = 1e-8) -> float:
    points = [[v / max(norm(u), eps) for v in u] for u in rows(x)]
    terms = []
    for i, p in enumerate(points):
        nearest = max((j for j in range(len(points)) if j != i), key=lambda j: dot(p, points[j]))
        terms.append(-math.log(math.sqrt(sum((a - b + eps) ** 2 for a, b in zip(p, points[nearest], strict=True))) + eps))
    return mean(terms)


def test_koleo_matches_the_formula():
    x = torch.randn(9, 4, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    assert koleo_loss(x).item() == pytest.approx(koleo_reference(x), rel=1e-6)


def test_koleo_prefers_spread_out_features():
    spread = torch.eye(4)  # orthogonal: every neighbour at distance sqrt(2)
    assert koleo_loss(spread).item() == pytest.approx(-math.log(math.sqrt(2)), rel=1e-5)
    crowded = torch.tensor([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [0.01, 1.0]])
    assert koleo_loss(crowded).item() > koleo_loss(spread).item() + 3
    x = torch.randn(8, 4, requires_grad=True)
    koleo_loss(x).backward()
    assert x.grad.abs().sum() > 0


# --- Sinkhorn-Knopp and SwAV's swapped prediction ------------------------------------------------


def sinkhorn_reference(scores: torch.Tensor, eps: float, iterations: int) -> list[list[float]]:
    """SwAV's Algorithm: Q = exp(S / eps), then alternately rows of Q^T (prototypes) to 1/K
    and columns of Q^T (samples) to 1/N, times N at the end."""
    s = rows(scores)
    n, k = len(s), len(s[0])
    q = [[math.exp(v / eps) for v in row] for row in s]
    total = sum(sum(row) for row in q)
    q = [[v / total for v in row] for row in q]
    for _ in range(iterations):
        prototype_sums = [sum(q[i][j] for i in range(n)) for j in range(k)]
        q = [[q[i][j] / prototype_sums[j] / k for j in range(k)] for i in range(n)]
        sample_sums = [sum(row) for row in q]
        q = [[v / sample_sums[i] / n for v in row] for i, row in enumerate(q)]
    return [[v * n for v in row] for row in q]


@pytest.fixture
def scores() -> torch.Tensor:
    # Cosine-like scores (|s| <= 1) in float64: 6 samples, 4 prototypes.
    return torch.rand(6, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 2 - 1


def test_sinkhorn_matches_the_algorithm(scores):
    for eps, iterations in ((0.05, 3), (0.5, 1), (0.1, 10)):
        codes = sinkhorn(scores, eps, iterations)
        assert codes.dtype == torch.float64
        torch.testing.assert_close(
            codes, torch.tensor(sinkhorn_reference(scores, eps, iterations), dtype=torch.float64), rtol=1e-10, atol=1e-12
        )


def test_sinkhorn_codes_are_distributions_with_equal_cluster_sizes(scores):
    codes = sinkhorn(scores, eps=0.5, iterations=200)
    torch.testing.assert_close(codes.sum(1), torch.ones(6, dtype=torch.float64))  # each sample: a distribution
    torch.testing.assert_close(codes.sum(0), torch.full((4,), 6 / 4, dtype=torch.float64))  # each prototype: N / K
    torch.testing.assert_close(sinkhorn(scores + 0.3, 0.5, 3), sinkhorn(scores, 0.5, 3))  # a shift changes nothing
    assert torch.isfinite(sinkhorn(torch.full((3, 2), 1.0), eps=1e-3)).all()  # exp(1000) would overflow without the shift


def swav_reference(scores: list[torch.Tensor], codes: list[torch.Tensor], t: float) -> float:
    terms = []
    for i, q in enumerate(codes):
        for v, s in enumerate(scores):
            if v == i:
                continue
            per_sample = []
            for q_row, s_row in zip(rows(q), rows(s), strict=True):
                log_z = math.log(sum(math.exp(x / t) for x in s_row))
                per_sample.append(-sum(q_k * (s_k / t - log_z) for q_k, s_k in zip(q_row, s_row, strict=True)))
            terms.append(mean(per_sample))
    return mean(terms)


def test_swav_loss_matches_the_formula():
    g = torch.Generator().manual_seed(3)
    views = [torch.rand(5, 4, generator=g, dtype=torch.float64) * 2 - 1 for _ in range(4)]  # 2 global + 2 local
    codes = [torch.softmax(torch.randn(5, 4, generator=g, dtype=torch.float64), 1) for _ in range(2)]
    for t in (0.1, 1.0):
        assert swav_loss(views, codes, t).item() == pytest.approx(swav_reference(views, codes, t), rel=1e-12)
        assert swav_loss(views[:2], codes, t).item() == pytest.approx(swav_reference(views[:2], codes, t), rel=1e-12)


def test_swav_loss_by_hand():
    # Two views, one sample, 2 prototypes; codes one-hot on the other view's prototype.
    # t = 1, scores (1, 0): CE = log(e + 1) - 1 when the code is on prototype 0.
    s = [torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0]])]
    q = [torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])]
    expected = ((math.log(math.e + 1) - 1) + math.log(math.e + 1)) / 2
    assert swav_loss(s, q, temperature=1.0).item() == pytest.approx(expected, rel=1e-6)


# --- NNCLR ---------------------------------------------------------------------------------


def test_nnclr_loss_matches_the_formula(pair):
    z, p = (x.double() for x in pair)
    support = torch.randn(9, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    # The neighbour, by hand: the support row of highest cosine similarity.
    neighbours = [max(rows(support), key=lambda q, z_i=z_i: cos(z_i, q)) for z_i in rows(z)]
    assert torch.equal(nearest_neighbour(z, support), torch.tensor(neighbours, dtype=torch.float64))
    for t in (0.1, 0.5):
        expected = mean(
            [
                -math.log(math.exp(cos(nn_i, rows(p)[i]) / t) / sum(math.exp(cos(nn_i, p_k) / t) for p_k in rows(p)))
                for i, nn_i in enumerate(neighbours)
            ]
        )
        assert nnclr_loss(nearest_neighbour(z, support), p, t).item() == pytest.approx(expected, rel=1e-12)


def test_nnclr_loss_sends_no_gradient_into_the_neighbour(pair):
    neighbours, p = pair[0].clone().requires_grad_(), pair[1].clone().requires_grad_()
    nnclr_loss(neighbours, p).backward()
    assert neighbours.grad is None and p.grad.abs().sum() > 0


# --- MoCo v3 -------------------------------------------------------------------------------


def test_mocov3_loss_matches_the_formula():
    g = torch.Generator().manual_seed(5)
    q_1, q_2, k_1, k_2 = (torch.randn(6, 5, generator=g, dtype=torch.float64) for _ in range(4))

    def ctr(q, k, t):
        return (
            2
            * t
            * mean(
                [
                    -math.log(math.exp(cos(q_i, rows(k)[i]) / t) / sum(math.exp(cos(q_i, k_j) / t) for k_j in rows(k)))
                    for i, q_i in enumerate(rows(q))
                ]
            )
        )

    for t in (0.2, 1.0):
        expected = ctr(q_1, k_2, t) + ctr(q_2, k_1, t)
        assert mocov3_loss(q_1, q_2, k_1, k_2, t).item() == pytest.approx(expected, rel=1e-12)
