"""Blocked top-2 / certified top-1 torch search and the exact re-check shared by all backends."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from hug_plugins._checks import check_matrix
from hug_plugins.ncm.bounds import (
    DEFAULT_BLOCK_BYTES,
    U32,
    U64,
    Metric,
    check_cosine_rows,
    check_metric,
    direct_cost,
    gamma,
    row_tolerance,
    torch_unit,
)

# --------------------------------------------------------------------------------------------
# Scoring engines
# --------------------------------------------------------------------------------------------


class TorchScorer:
    """Blocked top-2 search with torch matmul, plus the exact re-check shared by all backends.

    ``search_means`` are what the GEMM sees (float32 or float64; normalized for cosine);
    ``ref_means`` are the values the re-check uses.
    """

    def __init__(
        self,
        search_means: Tensor,
        ref_means: Tensor,
        metric: str,
        *,
        block_bytes: int = DEFAULT_BLOCK_BYTES,
    ) -> None:
        self.metric = metric
        self.block_bytes = int(block_bytes)
        dtype = search_means.dtype
        self.center: Tensor | None = None
        if metric == "cosine":
            search_means = search_means / search_means.norm(dim=1, keepdim=True)
        else:
            # L2 is translation invariant: centring on the mean of the means shrinks the norms
            # in the error bound (features after a ReLU share a large offset). It costs a pass
            # over every query, so it is done only where it at least halves the largest mean
            # norm (not for means spread around the origin).
            center = ref_means.to(torch.float64).mean(0)
            norms = ref_means.to(torch.float64).norm(dim=1).max()
            centred_norms = (ref_means.to(torch.float64) - center).norm(dim=1).max()
            if float(centred_norms) < 0.5 * float(norms):
                self.center = center.to(dtype)
                search_means = search_means - self.center
        self.means = search_means.contiguous()
        self.ref_means = ref_means
        if metric == "l2":
            m64 = self.means.to(torch.float64)
            self.bias: Tensor | None = (-0.5 * (m64 * m64).sum(1)).to(dtype)
            self.max_norm = float(m64.norm(dim=1).max())
        else:
            self.bias = None
            self.max_norm = 1.0
        self.unit = U64 if dtype == torch.float64 else torch_unit(search_means.device)
        self.num_means, self.dim = search_means.shape

    def prepare(self, q: Tensor) -> Tensor:
        """Queries as the GEMM sees them: search dtype, centred (L2) or normalized (cosine)."""
        q = q.to(device=self.means.device, dtype=self.means.dtype)
        if self.metric == "cosine":
            out: Tensor = q / q.norm(dim=1, keepdim=True)
            return out
        return q - self.center if self.center is not None else q

    def tolerance(self, q_search: Tensor, unit: float | None = None) -> Tensor:
        """Per-row bound (cost units) on the error of each float32 score of ``q_search``."""
        unit = self.unit if unit is None else unit
        # a float32 norm is within gamma_(d+2) of the exact one: inflate it to stay an upper bound
        q_norm = q_search.norm(dim=1).to(torch.float64)
        if q_search.dtype != torch.float64:
            q_norm = q_norm * (1.0 + gamma(self.dim + 2, U32))
        return row_tolerance(q_norm, self.max_norm, self.dim, self.metric, unit)

    # ---- float32 (or float64) top-2 -------------------------------------------------------
    def _blocks(self, rows: int) -> int:
        per_row = self.means.element_size() * rows
        budget = self.block_bytes * (8 if self.means.is_cuda else 1)  # GPU: fewer, larger GEMMs
        return max(1024, budget // max(per_row, 1))

    def _scores(self, q: Tensor, start: int, stop: int) -> Tensor:
        m = self.means[start:stop]
        if self.bias is None:
            return q @ m.T
        return torch.addmm(self.bias[start:stop], q, m.T)

    def _to_cost(self, scores: Tensor) -> Tensor:
        return -2.0 * scores if self.metric == "l2" else -scores

    def top2(self, q: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Returns ``(cost1, idx1, cost2)`` with ``cost1 <= cost2`` (cost2 = inf if C == 1)."""
        parts = [self._top2_rows(q[r : r + 4096]) for r in range(0, q.shape[0], 4096)]
        if len(parts) == 1:
            return parts[0]
        c1, i1, c2 = zip(*parts, strict=True)
        return torch.cat(c1), torch.cat(i1), torch.cat(c2)

    def _top2_rows(self, q: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        block = self._blocks(q.shape[0])
        best_v: Tensor | None = None
        best_i: Tensor | None = None
        for start in range(0, self.num_means, block):
            stop = min(start + block, self.num_means)
            scores = self._scores(q, start, stop)
            if scores.is_cuda and stop - start > 1:
                # two max-reductions beat a radix top-k on the GPU
                v1, i1 = scores.max(1, keepdim=True)
                v2 = scores.scatter_(1, i1, -math.inf).max(1, keepdim=True).values
                v, i = torch.cat([v1, v2], 1), torch.cat([i1, i1], 1)
            else:
                v, i = scores.topk(min(2, stop - start), dim=1)
            i = i + start
            if best_v is None or best_i is None:
                best_v, best_i = v, i
            else:
                v = torch.cat([best_v, v], 1)
                i = torch.cat([best_i, i], 1)
                sel_v, sel = v.topk(min(2, v.shape[1]), dim=1)
                best_v, best_i = sel_v, i.gather(1, sel)
        assert best_v is not None and best_i is not None
        cost = self._to_cost(best_v)
        cost2 = torch.full_like(cost[:, 0], math.inf) if cost.shape[1] == 1 else cost[:, 1]
        return cost[:, 0], best_i[:, 0], cost2

    # ---- exact re-check --------------------------------------------------------------------
    def recheck(self, q_ref: Tensor) -> Tensor:
        """Exact nearest mean (direct float64 formula, lowest index on ties) for ``q_ref`` rows.

        One pass over the class blocks keeps every class within twice the error bound of the
        running float32 minimum (a superset of the final candidate set), then the candidates
        are re-scored in float64.
        """
        n = q_ref.shape[0]
        device = self.means.device
        if n == 0:
            return torch.empty(0, dtype=torch.long, device=device)
        q_search = self.prepare(q_ref)
        tol2 = 2.0 * self.tolerance(q_search)
        rows_per = max(1, min(n, self.block_bytes // (16 * 1024)))
        out = torch.empty(n, dtype=torch.long, device=device)
        for r0 in range(0, n, rows_per):
            r1 = min(n, r0 + rows_per)
            qs = q_search[r0:r1]
            block = self._blocks(r1 - r0)
            best = torch.full((r1 - r0,), math.inf, dtype=torch.float64, device=device)
            rows_l: list[Tensor] = []
            cls_l: list[Tensor] = []
            cost_l: list[Tensor] = []
            for start in range(0, self.num_means, block):
                cost = self._to_cost(self._scores(qs, start, min(start + block, self.num_means)))
                cost = cost.to(torch.float64)
                best = torch.minimum(best, cost.min(1).values)
                r, c = (cost <= (best + tol2[r0:r1])[:, None]).nonzero(as_tuple=True)
                rows_l.append(r)
                cls_l.append(c + start)
                cost_l.append(cost[r, c])
            rows, cls, cost32 = torch.cat(rows_l), torch.cat(cls_l), torch.cat(cost_l)
            keep = cost32 <= (best + tol2[r0:r1])[rows]
            out[r0:r1] = self._resolve(q_ref[r0:r1].to(device), rows[keep], cls[keep], r1 - r0)
        return out

    def _resolve(self, q_ref: Tensor, rows: Tensor, cls: Tensor, n: int) -> Tensor:
        pair_chunk = max(1, self.block_bytes // (16 * self.dim))
        costs = torch.empty(rows.shape[0], dtype=torch.float64, device=rows.device)
        for p0 in range(0, rows.shape[0], pair_chunk):
            p1 = p0 + pair_chunk
            costs[p0:p1] = direct_cost(
                q_ref[rows[p0:p1]], self.ref_means[cls[p0:p1]].to(rows.device), self.metric
            )
        row_min = torch.full((n,), math.inf, dtype=torch.float64, device=rows.device)
        row_min = row_min.scatter_reduce(0, rows, costs, reduce="amin")
        big = torch.iinfo(torch.long).max
        masked = torch.where(costs == row_min[rows], cls, torch.full_like(cls, big))
        best = torch.full((n,), big, dtype=torch.long, device=rows.device)
        return best.scatter_reduce(0, rows, masked, reduce="amin")

    def top1_certified(
        self, q_ref: Tensor, unit: float | None = None, resolve: bool = False
    ) -> tuple[Tensor, Tensor]:
        """Best class of each query and whether it is certified, all classes in one block.

        For CPU searches whose classes fit one block (:meth:`single_block`), the top-2
        selection (and even a plain ``argmax``, which the CPU runs several times slower than a
        max-reduction) is replaced by: the row maximum (``amax``, vectorized), one in-place
        compare turning the score block into a 0/1 mask of the classes within the doubled
        error bound of the maximum, the mask's row sums (a row is certified when only its best
        class is in the mask) and the mask times ``(0, 1, ..., C-1)`` (the best class of a
        certified row, exact in float32 for ``C < 2^24``), both from one skinny product. The
        queries are prepared and bounded per chunk of rows, while the chunk is in cache. The
        test is that of :meth:`search`, made conservative for float32 rounding: it may flag a
        few more rows, never fewer.

        With ``resolve`` the unsure rows are settled at once: their mask already lists every
        class within the doubled bound of their float32 best (hence the exact nearest one), and
        only those are re-scored in float64 (no second pass over the classes).

        Args:
            q_ref: ``(n, d)`` queries as given (float32 or float64).
            unit: Unit roundoff of the scores (default: the scorer's).
            resolve: Settle the unsure rows exactly (see above).

        Returns:
            ``(idx1, unsure)``: int64 best classes (exact everywhere with ``resolve``, else
            where not unsure) and the mask of unsure rows.
        """
        # columns (1, c): one skinny product gives each row's mask count and position sum
        probe = torch.stack(
            [
                torch.ones(self.num_means, dtype=self.means.dtype, device=self.means.device),
                torch.arange(self.num_means, dtype=self.means.dtype, device=self.means.device),
            ],
            dim=1,
        )
        # ~2M scores (8 MiB) per chunk keeps the block in cache for the passes after the GEMM
        # (measured: 2048 rows at C = 1,000 ran 1.25x faster than 4096).
        rows = max(512, min(4096, (1 << 21) // max(self.num_means, 1)))
        idx_parts, unsure_parts = [], []
        for r in range(0, q_ref.shape[0], rows):
            q = self.prepare(q_ref[r : r + rows])
            tol = self.tolerance(q, unit)
            # cost = -2 score (L2) or -score (cosine): a cost margin of 2 tol is a score margin
            # of tol (L2) or 2 tol (cosine); widened for the float32 rounding of the subtraction.
            margin = (tol if self.metric == "l2" else 2.0 * tol).to(q.dtype)
            scores = self._scores(q, 0, self.num_means)
            best = scores.amax(1)
            slack = margin * 1.001 + best.abs() * (4.0 * U32)
            mask = scores.ge_((best - slack)[:, None])  # in place: 1.0 near the best, else 0.0
            count_and_position = mask @ probe
            unsure = count_and_position[:, 0] >= 2
            idx = count_and_position[:, 1].long()
            if resolve and bool(unsure.any()):
                # The mask holds every class within the doubled bound of the row's float32
                # best, hence the exact nearest one: re-score just those in float64.
                local = unsure.nonzero()[:, 0]
                pair_rows, pair_cls = mask[local].nonzero(as_tuple=True)
                q_unsure = q_ref[r : r + rows][local]
                idx[local] = self._resolve(q_unsure, pair_rows, pair_cls, int(local.shape[0]))
            unsure_parts.append(unsure)
            idx_parts.append(idx)
        return torch.cat(idx_parts), torch.cat(unsure_parts)

    def single_block(self, rows: int) -> bool:
        """Whether a CPU float32 search of ``rows`` queries sees all classes in one block (then
        :meth:`top1_certified` replaces :meth:`top2`)."""
        one_block = self._blocks(min(4096, rows)) >= self.num_means
        return one_block and not self.means.is_cuda and self.means.dtype == torch.float32

    def best_and_unsure(
        self, q_ref: Tensor, unit: float | None = None
    ) -> tuple[Tensor, Tensor, bool]:
        """Best class of each query, the mask of unsure rows, and whether those are settled.

        Single-block CPU searches settle the unsure rows themselves (:meth:`top1_certified`
        with ``resolve``); otherwise the caller re-checks them (:meth:`recheck`).
        """
        if self.single_block(q_ref.shape[0]):
            return (*self.top1_certified(q_ref, unit, resolve=True), True)
        q_search = self.prepare(q_ref)
        cost1, idx1, cost2 = self.top2(q_search)
        tol = self.tolerance(q_search, unit).to(cost1.device)
        return idx1, (cost2.to(torch.float64) - cost1.to(torch.float64)) <= 2.0 * tol, False

    def search(self, q_ref: Tensor) -> Tensor:
        """Exact search: float32 best class with a certificate, then re-check of the unsure rows."""
        idx1, unsure_mask, settled = self.best_and_unsure(q_ref)
        unsure = unsure_mask.nonzero()[:, 0]
        idx = idx1.clone()
        if unsure.numel() and not settled:
            idx[unsure] = self.recheck(q_ref[unsure.to(q_ref.device)])
        return idx


def ncm_reference(
    queries: Tensor,
    means: Tensor,
    metric: Metric = "l2",
    *,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> Tensor:
    """Float64 nearest-mean rule, the definition the exact search reproduces.

    Cost is ``sum((x - mu)^2)`` (``"l2"``) or ``-<x, mu> / (||x|| ||mu||)`` (``"cosine"``), in
    float64 from the given values; ties go to the lowest index. Candidates are located with a
    float64 GEMM and certified with the float64 error bound, then re-scored directly, so the
    cost is one float64 GEMM (blocked, bounded memory) instead of an ``n * C * d`` broadcast.

    Args:
        queries: ``(n, d)`` features.
        means: ``(C, d)`` class means.
        metric: ``"l2"`` or ``"cosine"``.
        block_bytes: Memory budget of one score block.

    Returns:
        ``(n,)`` int64 indices into ``means``.

    Examples:
        >>> ncm_reference(torch.tensor([[0.9, 0.0]]), torch.eye(2)).tolist()
        [0]
    """
    check_metric(metric)
    check_matrix(means, "means")
    check_matrix(queries, "queries", means.shape[1])
    q = queries.detach().to(torch.float64)
    m = means.detach().to(torch.float64)
    if metric == "cosine":
        check_cosine_rows(q, "queries")
        check_cosine_rows(m, "means")
    return TorchScorer(m, m, metric, block_bytes=block_bytes).search(q)
