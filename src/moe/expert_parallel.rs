//! Expert parallelism: which rank holds which experts, and the bookkeeping of the
//! dispatch (token rows to the ranks of their experts) and of the return trip (expert
//! outputs back to the tokens' rank), as pure host functions.
//!
//! These functions are the specification of what the device does in
//! `ExpertParallelMoe` (feature `nccl`), which builds the same arrays with the MoE plan
//! kernel: the send side is a masked plan over *ranks* (`experts = N`, `max_m = C`) of
//! the routing mapped to ranks, the receive side a masked plan over the local experts
//! (`top_k = 1`) of the received expert ids. The CPU tests check them bit for bit against
//! a simulation of N ranks and the single-GPU reference layer.
//!
//! Layout of the exchange, all fixed-size so nothing depends on the routing on the host:
//!
//! * every (source, destination) pair has a **message of `C` rows**
//!   ([`EpPartition::send_capacity`]; `C = round_up(T * min(k, E / N), 64)`, the most
//!   slots `T` tokens can route to one rank), so the send buffer is `[N, C]` rows and the
//!   receive buffer `[N, C]` rows (row `s * C + i` = the `i`-th row from source `s`);
//! * the rows to destination `d` are the slots whose expert lives on `d`, in slot order
//!   (token, then choice `j`); the message's unused tail carries expert id `-1`;
//! * each row travels with its **local expert id** (`expert - d * E / N`), so the send
//!   counts need no separate exchange for the layout (the count of a message is its
//!   number of ids `>= 0`; [`ReceivePlan::recv_counts`] is that count);
//! * the receiver lays its rows out in the masked grouped-GEMM layout `[E / N, max_m]`,
//!   each local expert's rows in receive order (source rank, then the source's slot
//!   order). With the tokens of all ranks concatenated in rank order this is exactly the
//!   single-GPU layer's slot order, so an expert that overflows `max_m` drops the same
//!   slots as the single-GPU masked layer; [`EpPartition::max_m_no_drop`] (`N T`) never
//!   drops;
//! * the return trip is the inverse: the receiver writes the output of received row
//!   `s * C + i` (zeros when dropped) at row `i` of the message to `s`; the source then
//!   finds slot `(t, j)`'s output at row [`DispatchPlan::row_of`] and combines its `k`
//!   outputs in slot order with the routing weights, as the single-GPU combine.
use std::ops::Range;

use crate::error::{DsaError, Result};

/// Row granularity of the exchange messages and of the masked layout (the grouped GEMM's
/// smallest M tile).
pub const EP_ROW_ALIGN: usize = 64;

/// N ranks, each holding a contiguous range of `E / N` experts (rank `r`: experts
/// `[r E / N, (r + 1) E / N)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpPartition {
    ranks: usize,
    experts: usize,
}

fn capacity_error(what: &'static str) -> DsaError {
    DsaError::Capacity {
        what,
        needed: usize::MAX,
        capacity: i32::MAX as usize,
    }
}

/// `round_up(a * b, 64)`, checked to fit the kernels' i32 row indices.
fn rows_i32(what: &'static str, a: usize, b: usize) -> Result<usize> {
    let v = a
        .checked_mul(b)
        .and_then(|v| v.checked_next_multiple_of(EP_ROW_ALIGN))
        .ok_or_else(|| capacity_error(what))?;
    crate::check::fits_i32(what, v)?;
    Ok(v)
}

impl EpPartition {
    /// `experts` split over `ranks`; `ranks` must be positive and divide `experts`.
    pub fn new(experts: usize, ranks: usize) -> Result<Self> {
        if ranks == 0 || experts == 0 || !experts.is_multiple_of(ranks) {
            return Err(DsaError::Unsupported {
                what: "expert-parallel partition",
                detail: format!(
                    "{experts} experts over {ranks} ranks: the ranks must divide the experts"
                ),
            });
        }
        Ok(Self { ranks, experts })
    }

    pub fn ranks(&self) -> usize {
        self.ranks
    }

    pub fn experts(&self) -> usize {
        self.experts
    }

    /// Experts held by each rank, `E / N`.
    pub fn experts_per_rank(&self) -> usize {
        self.experts / self.ranks
    }

    /// The rank holding `expert`, `None` for an id outside `[0, E)` (a dropped slot).
    pub fn rank_of(&self, expert: i32) -> Option<usize> {
        usize::try_from(expert)
            .ok()
            .filter(|&e| e < self.experts)
            .map(|e| e / self.experts_per_rank())
    }

    /// The global expert ids of `rank`.
    pub fn local_experts(&self, rank: usize) -> Range<usize> {
        let per = self.experts_per_rank();
        rank * per..(rank + 1) * per
    }

    /// Rows `C` of one (source, destination) message for at most `tokens` tokens per rank
    /// with `top_k` choices: `round_up(tokens * min(top_k, E / N), 64)` (a token sends at
    /// most one row per expert, so at most `min(k, E / N)` to one rank), at least 64.
    pub fn send_capacity(&self, tokens: usize, top_k: usize) -> Result<usize> {
        let per_token = top_k.min(self.experts_per_rank());
        Ok(rows_i32("expert-parallel message rows", tokens, per_token)?.max(EP_ROW_ALIGN))
    }

    /// The masked layout's `max_m` that never drops a row: every rank's `tokens` tokens
    /// on one expert, `round_up(N * tokens, 64)` (at least 64).
    pub fn max_m_no_drop(&self, tokens: usize) -> Result<usize> {
        Ok(rows_i32("expert-parallel max_m", self.ranks, tokens)?.max(EP_ROW_ALIGN))
    }
}

/// One rank's send side of a routing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DispatchPlan {
    /// Rows `C` of each message.
    pub capacity: usize,
    /// Rows sent to each destination rank `[N]`.
    pub send_counts: Vec<usize>,
    /// `[N, C]`: the slot (`token * top_k + j`) each send row carries, `-1` on the tail.
    pub send_src: Vec<i32>,
    /// `[N, C]`: the local expert id (on the destination) of each send row, `-1` on the
    /// tail. This is what travels with the rows.
    pub send_experts: Vec<i32>,
    /// `[T k]`: the send row (`d * C + i`) of each slot, `-1` for a dropped id. The return
    /// messages use the same rows, so this is also where the slot's output comes back.
    pub row_of: Vec<i32>,
}

/// The send side of one rank's routing `ids` (`[T, top_k]`, ids outside `[0, E)` are
/// dropped slots) with messages of `capacity` rows. Rows to each destination are in slot
/// order. Fails when `capacity` is not a positive multiple of 64 or too small for some
/// destination (never with [`EpPartition::send_capacity`]).
pub fn plan_dispatch(part: &EpPartition, ids: &[i32], capacity: usize) -> Result<DispatchPlan> {
    if capacity == 0 || !capacity.is_multiple_of(EP_ROW_ALIGN) {
        return Err(DsaError::Unsupported {
            what: "expert-parallel message rows",
            detail: format!("{capacity} must be a positive multiple of {EP_ROW_ALIGN}"),
        });
    }
    let n = part.ranks();
    let rows = n
        .checked_mul(capacity)
        .ok_or_else(|| capacity_error("expert-parallel send rows"))?;
    crate::check::fits_i32("expert-parallel send rows", rows)?;
    crate::check::fits_i32("expert-parallel slots", ids.len())?;
    let per = part.experts_per_rank();
    let mut send_counts = vec![0usize; n];
    let mut send_src = vec![-1i32; rows];
    let mut send_experts = vec![-1i32; rows];
    let mut row_of = vec![-1i32; ids.len()];
    for (slot, &e) in ids.iter().enumerate() {
        let Some(d) = part.rank_of(e) else { continue };
        let i = send_counts[d];
        if i >= capacity {
            return Err(DsaError::Capacity {
                what: "expert-parallel message rows",
                needed: i + 1,
                capacity,
            });
        }
        let row = d * capacity + i;
        send_src[row] = slot as i32;
        send_experts[row] = e - (d * per) as i32;
        row_of[slot] = row as i32;
        send_counts[d] += 1;
    }
    Ok(DispatchPlan {
        capacity,
        send_counts,
        send_src,
        send_experts,
        row_of,
    })
}

/// One rank's receive side: the masked grouped-GEMM layout of the rows it received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivePlan {
    /// `max_m` of the masked layout.
    pub max_m: usize,
    /// Rows received from each source rank `[N]`.
    pub recv_counts: Vec<usize>,
    /// `[E / N]` valid rows per local expert, `min(rows routed, max_m)`.
    pub masked_m: Vec<i32>,
    /// `[E / N, max_m]`: the received row (`s * C + i`) of each masked row, `-1` past
    /// `masked_m`.
    pub src: Vec<i32>,
    /// `[N C]`: the masked row of each received row, `-1` on message tails and dropped
    /// rows. The return message to `s` has at row `i` the output of masked row
    /// `row_of[s * C + i]` (zeros when `-1`).
    pub row_of: Vec<i32>,
    /// Some local expert got more than `max_m` rows (the rest were dropped, in receive
    /// order).
    pub overflow: bool,
}

/// The receive side from `recv_experts` (`[N, C]`: the local expert ids of the received
/// rows, source-major, `-1` on message tails), laid out with `max_m` rows per local
/// expert (a positive multiple of 64).
pub fn plan_receive(
    part: &EpPartition,
    recv_experts: &[i32],
    capacity: usize,
    max_m: usize,
) -> Result<ReceivePlan> {
    let n = part.ranks();
    let per = part.experts_per_rank();
    if max_m == 0 || !max_m.is_multiple_of(EP_ROW_ALIGN) {
        return Err(DsaError::Unsupported {
            what: "expert-parallel max_m",
            detail: format!("{max_m} must be a positive multiple of {EP_ROW_ALIGN}"),
        });
    }
    let rows = n.checked_mul(capacity).filter(|&r| r == recv_experts.len());
    if rows.is_none() {
        return Err(DsaError::Shape {
            what: "expert-parallel received expert ids",
            expected: vec![n, capacity],
            got: vec![recv_experts.len()],
        });
    }
    let masked_rows = per
        .checked_mul(max_m)
        .ok_or_else(|| capacity_error("expert-parallel masked rows"))?;
    crate::check::fits_i32("expert-parallel masked rows", masked_rows)?;
    let mut recv_counts = vec![0usize; n];
    let mut masked_m = vec![0i32; per];
    let mut src = vec![-1i32; masked_rows];
    let mut row_of = vec![-1i32; recv_experts.len()];
    let mut overflow = false;
    for (r, &g) in recv_experts.iter().enumerate() {
        let Some(g) = usize::try_from(g).ok().filter(|&g| g < per) else {
            continue;
        };
        recv_counts[r / capacity.max(1)] += 1;
        let i = masked_m[g] as usize;
        if i >= max_m {
            overflow = true;
            continue;
        }
        src[g * max_m + i] = r as i32;
        row_of[r] = (g * max_m + i) as i32;
        masked_m[g] += 1;
    }
    Ok(ReceivePlan {
        max_m,
        recv_counts,
        masked_m,
        src,
        row_of,
        overflow,
    })
}

/// The message rank `src_rank` sends to `dst`: rows `[dst C, (dst + 1) C)` of its send
/// buffer. Concatenating, for one receiver, the messages of every source in rank order
/// gives its receive buffer (what the NCCL grouped send/recv does).
pub fn message(plan: &DispatchPlan, dst: usize) -> Range<usize> {
    dst * plan.capacity..(dst + 1) * plan.capacity
}
