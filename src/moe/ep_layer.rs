//! The expert-parallel MoE layer: N ranks, one GPU each, each holding `E / N` experts;
//! layouts and their host specification in [`expert_parallel`](super::expert_parallel).
//! [`ExpertParallelMoe::forward`] (feature `nccl`) runs it over NCCL; the phases it is
//! made of ([`ExpertParallelMoe::dispatch`], [`ExpertParallelMoe::run_experts`],
//! [`ExpertParallelMoe::combine`]) are public for an engine with its own transport,
//! which moves the messages between them.
//!
//! Per forward, on one stream, no host synchronization of its own:
//!
//! 1. route the rank's own tokens ([`DsaKernels::moe_route`], all `E` experts);
//! 2. map the routing to destination ranks and plan the sends: a masked plan over ranks
//!    (`experts = N`, `max_m = C`), so the rows to rank `d` are in slot order at rows
//!    `[d C, (d + 1) C)`; quantize them with [`DsaKernels::moe_permute_quant`] (FP8 codes
//!    and 1x128 scales, each message's scales MN-major) and write each row's local expert
//!    id ([`DsaKernels::moe_ep_send_experts`]);
//! 3. **dispatch**: one NCCL group of send/recv pairs with every rank (itself included):
//!    codes `C x H` bytes, scales `C H / 128` f32 and expert ids `C` i32 per pair, fixed
//!    sizes (the worst case), so no count has to reach the host first. The counts travel
//!    as the ids (`-1` on a message's unused tail);
//! 4. plan the received rows into the masked layout over the local experts (the MoE plan
//!    with `top_k = 1`) and gather them there ([`DsaKernels::moe_ep_gather_fp8`]);
//! 5. masked grouped GEMM w13, SwiGLU + quant, masked grouped GEMM w2;
//! 6. **return**: the outputs back in message order ([`DsaKernels::moe_ep_gather_rows`]),
//!    one NCCL group of bf16 `C x H` messages;
//! 7. the shared expert on the rank's own tokens, and the combine of each token's `k`
//!    outputs in slot order with its routing weights ([`DsaKernels::moe_combine`] on the
//!    send plan: slot `(t, j)`'s output came back at the row it was sent from).
//!
//! Equality with the single-GPU [`MoeLayer`](super::MoeLayer): every row's quantization
//! and GEMM depend on that row alone and the combine order is the same, so with no
//! dropped row (`max_m >= N * max_tokens`, [`EpPartition::max_m_no_drop`]) the output
//! is the single-GPU layer's on the same tokens, bit for bit, whatever the rank count
//! (the CPU simulation in tests/expert_parallel.rs checks this with the reference; the
//! one-rank GPU test checks the device path). With a smaller `max_m` an expert drops the
//! same slots as the single-GPU masked layer of all ranks' tokens in rank order.
//!
//! Costs of the fixed sizes: each message is `C = round_up(T min(k, E / N), 64)` rows
//! whatever the routing, so the dispatch moves `N C (H + 4 H / 128 + 4)` bytes per rank
//! and the return `N C 2 H`, not the routed rows only; at decode sizes (T <= 128) the
//! messages are latency-bound, which is what the fixed sizes buy (no count round trip).
//!
//! CUDA graphs: everything here is kernel launches and NCCL calls on one stream, with no
//! host synchronization and no allocation, which is what stream capture needs; NCCL
//! supports capturing its operations (2.9 and later). Whether capture works on a given
//! setup (NCCL version, transport) has not been tried: no capture test exists yet.
//!
//! # Data-parallel attention
//!
//! DeepSeek-V3.2 is served with attention data-parallel and the MoE expert-parallel over
//! the same ranks: each rank holds its own sequences (its own batch, block tables and
//! caches) and runs the whole attention of a layer on them with its own
//! [`DsaDecodeStep`](crate::decode_step::DsaDecodeStep), with no communication; the
//! layer's MoE then takes the rank's tokens into the collective [`ExpertParallelMoe`]
//! forward, and each rank gets back the MoE output of its own tokens. Ranks with fewer
//! tokens (or none) still join every forward: the message sizes depend only on
//! `max_tokens`. One process (or thread) per GPU: see the example of
//! [`ExpertParallelMoe::forward`] (feature `nccl`).
//!
use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
#[cfg(feature = "nccl")]
use cudarc::nccl::{group_end, group_start, Comm, NcclType};
use half::bf16;

use super::expert_parallel::EpPartition;
use super::layer::{check_weights, ExpertWork, SharedWork};
use super::{Align, MoeLayout, MoePlan, MoeShape, MoeWeights, RouteConfig, MOE_BLOCK};
use crate::error::{DsaError, Result};
use crate::runtime::DsaKernels;

/// The rows of the dispatch messages on one side of the exchange, `[N, C]` rows
/// source- (or destination-) major: message `p` is `codes[p C H ..][.. C H]` (e4m3 `[C,
/// H]`), `scales[p C H / 128 ..][.. C H / 128]` (f32 `[H / 128, C]`, MN-major) and
/// `experts[p C ..][.. C]` (i32 local expert ids, `-1` on the unused tail).
#[derive(Debug)]
pub struct EpRows {
    pub codes: CudaSlice<u8>,
    pub scales: CudaSlice<f32>,
    pub experts: CudaSlice<i32>,
}

impl EpRows {
    fn new(stream: &Arc<CudaStream>, ranks: usize, capacity: usize, hidden: usize) -> Result<Self> {
        let rows = super::shape::mul("expert-parallel rows", ranks, capacity)?;
        let kb = hidden / MOE_BLOCK;
        Ok(Self {
            codes: stream.alloc_zeros(super::shape::mul("expert-parallel codes", rows, hidden)?)?,
            scales: stream.alloc_zeros(super::shape::mul("expert-parallel scales", rows, kb)?)?,
            experts: stream.alloc_zeros(rows)?,
        })
    }
}

/// Where a rank sits and the sizes every rank must agree on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpConfig {
    /// This rank, `0..ranks`.
    pub rank: usize,
    /// Ranks `N`; they must divide the experts.
    pub ranks: usize,
    /// Most tokens any rank brings to one forward (sets the message rows `C`).
    pub max_tokens: usize,
    /// Rows per local expert (a positive multiple of 64); `None` for
    /// [`EpPartition::max_m_no_drop`], which never drops a row.
    pub max_m: Option<usize>,
}

/// One rank of the expert-parallel MoE layer: owns the exchange buffers and the local
/// experts' workspace for at most `max_tokens` tokens per rank (allocated once by
/// [`ExpertParallelMoe::new`]), and runs route -> dispatch -> grouped GEMMs -> return ->
/// combine ([module docs](self)).
///
/// Every rank must create its runner with the same [`EpConfig`] sizes and layer shape
/// (its own `tokens`), and run every forward (or every phase) the same number of times in
/// the same order: each forward exchanges messages with every rank.
#[derive(Debug)]
pub struct ExpertParallelMoe {
    part: EpPartition,
    rank: usize,
    capacity: usize,
    route: RouteConfig,
    /// The routing of this rank's tokens over all experts.
    route_shape: MoeShape,
    /// The plan over ranks: `experts = N`, masked with `max_m = C`.
    send_shape: MoeShape,
    /// The received rows as slots (`top_k = 1`) over the local experts, masked `max_m`.
    recv_shape: MoeShape,
    ids: CudaSlice<i32>,
    weights: CudaSlice<f32>,
    rank_ids: CudaSlice<i32>,
    send_plan: MoePlan,
    recv_plan: MoePlan,
    send: EpRows,
    recv: EpRows,
    /// The experts' buffers over the received rows (`recv_shape`).
    work: ExpertWork,
    ret_send: CudaSlice<bf16>,
    ret_recv: CudaSlice<bf16>,
    shared: Option<SharedWork>,
}

impl ExpertParallelMoe {
    /// The runner of rank `cfg.rank` for a layer of `shape` (`shape.tokens` = this rank's
    /// tokens per forward, at most `cfg.max_tokens`; `shape.experts` = all experts `E`;
    /// `shape.layout` and `align` are ignored: the layer is masked), with a shared expert
    /// of width `shared_inter` if any. Buffers are allocated on `stream`.
    pub fn new(
        stream: &Arc<CudaStream>,
        cfg: &EpConfig,
        shape: &MoeShape,
        route: &RouteConfig,
        shared_inter: Option<usize>,
    ) -> Result<Self> {
        let part = EpPartition::new(shape.experts, cfg.ranks)?;
        if cfg.rank >= cfg.ranks {
            return Err(DsaError::OutOfRange {
                what: "expert-parallel rank",
                position: 0,
                value: cfg.rank as i64,
                low: 0,
                high: cfg.ranks as i64,
            });
        }
        if shape.tokens > cfg.max_tokens {
            return Err(DsaError::Capacity {
                what: "expert-parallel tokens per rank",
                needed: shape.tokens,
                capacity: cfg.max_tokens,
            });
        }
        let route_shape = MoeShape {
            layout: MoeLayout::Contiguous,
            ..*shape
        };
        route_shape.validate()?;
        route.validate(&route_shape)?;
        let capacity = part.send_capacity(cfg.max_tokens, shape.top_k)?;
        let max_m = match cfg.max_m {
            Some(m) => m,
            None => part.max_m_no_drop(cfg.max_tokens)?,
        };
        let n = part.ranks();
        let send_shape = MoeShape {
            experts: n,
            align: Align::A64,
            layout: MoeLayout::Masked { max_m: capacity },
            ..*shape
        };
        send_shape.validate()?;
        let recv_shape = MoeShape {
            tokens: super::shape::mul("expert-parallel received rows", n, capacity)?,
            experts: part.experts_per_rank(),
            top_k: 1,
            align: Align::A64,
            layout: MoeLayout::Masked { max_m },
            ..*shape
        };
        recv_shape.validate()?;
        let slots = route_shape.slots()?;
        let ret_len = super::shape::mul(
            "expert-parallel return rows",
            recv_shape.tokens,
            shape.hidden,
        )?;
        let shared = match shared_inter {
            None => None,
            Some(inter) => Some(SharedWork::new(stream, shape, inter)?),
        };
        Ok(Self {
            part,
            rank: cfg.rank,
            capacity,
            route: *route,
            route_shape,
            send_shape,
            recv_shape,
            ids: stream.alloc_zeros(slots.max(1))?,
            weights: stream.alloc_zeros(slots.max(1))?,
            rank_ids: stream.alloc_zeros(slots.max(1))?,
            send_plan: MoePlan::new(stream, &send_shape)?,
            recv_plan: MoePlan::new(stream, &recv_shape)?,
            send: EpRows::new(stream, n, capacity, shape.hidden)?,
            recv: EpRows::new(stream, n, capacity, shape.hidden)?,
            work: ExpertWork::new(stream, &recv_shape)?,
            ret_send: stream.alloc_zeros(ret_len)?,
            ret_recv: stream.alloc_zeros(ret_len)?,
            shared,
        })
    }

    pub fn partition(&self) -> &EpPartition {
        &self.part
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Rows `C` of each message.
    pub fn message_rows(&self) -> usize {
        self.capacity
    }

    /// The global expert ids this rank holds.
    pub fn local_experts(&self) -> std::ops::Range<usize> {
        self.part.local_experts(self.rank)
    }

    /// Routing ids `[tokens, top_k]` of the last forward (global expert ids).
    pub fn ids(&self) -> &CudaSlice<i32> {
        &self.ids
    }

    /// The plan of the received rows of the last forward: its status holds the overflow
    /// flag (some local expert got more than `max_m` rows) and its `masked_m` the rows per
    /// local expert.
    pub fn receive_plan(&self) -> &MoePlan {
        &self.recv_plan
    }

    /// The dispatch messages this rank sends (after [`Self::dispatch`]): message `d` goes
    /// to rank `d`.
    pub fn send_rows(&self) -> &EpRows {
        &self.send
    }

    /// Where the dispatch messages arrive (before [`Self::run_experts`]): message `s`
    /// from rank `s`.
    pub fn recv_rows_mut(&mut self) -> &mut EpRows {
        &mut self.recv
    }

    /// The return messages this rank sends (after [`Self::run_experts`]): bf16 `[N, C,
    /// H]`, message `s` (the outputs of the rows received from `s`, in their order, zeros
    /// for dropped rows) goes back to rank `s`.
    pub fn return_rows(&self) -> &CudaSlice<bf16> {
        &self.ret_send
    }

    /// Where the return messages arrive (before [`Self::combine`]): message `d` from rank
    /// `d`, the outputs of the rows this rank sent to `d`.
    pub fn returned_rows_mut(&mut self) -> &mut CudaSlice<bf16> {
        &mut self.ret_recv
    }

    /// Phase 1 (steps 1-2 of the [module docs](self)): routes this rank's `x` bf16
    /// `[tokens, hidden]` by `logits` f32 `[tokens, E]` and writes the dispatch messages
    /// ([`Self::send_rows`]). `w` holds the bias of all `E` experts and the w13 / w2 of
    /// this rank's `E / N` experts only (`[E / N, ..]`, in the order of
    /// [`Self::local_experts`]), plus the shared expert.
    pub fn dispatch<L, X>(
        &mut self,
        k: &DsaKernels,
        w: &MoeWeights<'_>,
        logits: &L,
        x: &X,
    ) -> Result<()>
    where
        L: DevicePtr<f32>,
        X: DevicePtr<bf16>,
    {
        let rs = self.route_shape;
        check_weights(w, &rs, self.part.experts_per_rank(), self.shared.as_ref())?;
        k.moe_route(
            &rs,
            &self.route,
            logits,
            &w.bias,
            &mut self.ids,
            &mut self.weights,
        )?;
        k.moe_ep_rank_ids(&self.part, rs.slots()?, &self.ids, &mut self.rank_ids)?;
        k.moe_plan(&self.send_shape, &self.rank_ids, &mut self.send_plan)?;
        k.moe_ep_send_experts(
            &self.part,
            &self.send_shape,
            &self.send_plan,
            &self.ids,
            &mut self.send.experts,
        )?;
        k.moe_permute_quant(
            &self.send_shape,
            &self.send_plan,
            x,
            &mut self.send.codes,
            &mut self.send.scales,
        )
    }

    /// Phase 2 (steps 4-6): the received rows ([`Self::recv_rows_mut`]) through the local
    /// experts, and their outputs into the return messages ([`Self::return_rows`]).
    pub fn run_experts(&mut self, k: &DsaKernels, w: &MoeWeights<'_>) -> Result<()> {
        let rs = self.route_shape;
        check_weights(w, &rs, self.part.experts_per_rank(), self.shared.as_ref())?;
        let (c, hd) = (self.capacity, rs.hidden);
        let rsh = self.recv_shape;
        k.moe_plan(&rsh, &self.recv.experts, &mut self.recv_plan)?;
        k.moe_ep_gather_fp8(
            &rsh,
            &self.recv_plan,
            c,
            &self.recv.codes,
            &self.recv.scales,
            &mut self.work.a1,
            &mut self.work.sfa1,
        )?;
        self.work.run(k, &rsh, &self.recv_plan, w)?;
        k.moe_ep_gather_rows(
            rsh.slots()?,
            rsh.rows()?,
            hd,
            &self.work.y,
            &self.recv_plan.row_of(),
            &mut self.ret_send,
        )
    }

    /// Phase 3 (step 7): the shared expert on this rank's `x` and the combine of the
    /// returned outputs ([`Self::returned_rows_mut`]) into `out` bf16 `[tokens, hidden]`.
    pub fn combine<X, O>(
        &mut self,
        k: &DsaKernels,
        w: &MoeWeights<'_>,
        x: &X,
        out: &mut O,
    ) -> Result<()>
    where
        X: DevicePtr<bf16>,
        O: DevicePtrMut<bf16>,
    {
        let rs = self.route_shape;
        check_weights(w, &rs, self.part.experts_per_rank(), self.shared.as_ref())?;
        if let (Some(sw), Some(work)) = (&w.shared, &mut self.shared) {
            work.forward(k, sw, &rs, x)?;
        }
        let shared_y = self.shared.as_ref().map(|w| w.y());
        k.moe_combine(
            &self.send_shape,
            &self.send_plan,
            &self.ret_recv,
            &self.weights,
            shared_y,
            out,
        )
    }
}

#[cfg(feature = "nccl")]
fn nccl_err(what: &'static str) -> impl Fn(cudarc::nccl::result::NcclError) -> DsaError {
    move |e| DsaError::Communication {
        what,
        detail: format!("{e:?}"),
    }
}

#[cfg(feature = "nccl")]
impl EpConfig {
    /// The configuration of `comm`'s rank.
    pub fn of(comm: &Comm, max_tokens: usize, max_m: Option<usize>) -> Self {
        Self {
            rank: comm.rank(),
            ranks: comm.world_size(),
            max_tokens,
            max_m,
        }
    }
}

#[cfg(feature = "nccl")]
impl ExpertParallelMoe {
    /// `out` bf16 `[tokens, hidden]` = the layer applied to this rank's `x` bf16
    /// `[tokens, hidden]` routed by `logits` f32 `[tokens, E]` (weights as in
    /// [`Self::dispatch`]): dispatch, one NCCL group exchanging the dispatch messages with
    /// every rank, the local experts, one NCCL group returning the outputs, combine. `k`
    /// must launch on the communicator's stream. Collective: every rank calls it.
    ///
    /// Data-parallel attention then this layer, one process (or thread) per GPU:
    ///
    /// ```no_run
    /// use dsa_kernels::cudarc::nccl::{Comm, Id};
    /// use dsa_kernels::decode_step::{DsaDecodeStep, DsaDecodeStepConfig};
    /// use dsa_kernels::moe::{EpConfig, ExpertParallelMoe, MoeShape, RouteConfig};
    /// use dsa_kernels::{device, DsaKernels};
    ///
    /// # fn rank_main(rank: usize, ranks: usize, id: Id) -> dsa_kernels::Result<()> {
    /// // `id` comes from `Id::new()` on rank 0, sent to the others by the engine.
    /// let ctx = device::open_device(rank)?;
    /// let stream = ctx.new_stream()?;
    /// let comm = Comm::from_rank(stream.clone(), rank, ranks, id)
    ///     .map_err(|e| dsa_kernels::DsaError::Communication { what: "NCCL init", detail: format!("{e:?}") })?;
    /// let k = DsaKernels::new(stream.clone())?; // the communicator's stream
    /// // This rank's attention: its own batch of up to 32 sequences and its own caches.
    /// let mut step = DsaDecodeStep::new(&k, DsaDecodeStepConfig::deepseek_v32(32, 1, 2048))?;
    /// // This rank's share of the experts, for up to 32 tokens per rank.
    /// let ep = EpConfig::of(&comm, 32, None);
    /// let mut moe = ExpertParallelMoe::new(
    ///     &stream, &ep, &MoeShape::deepseek_v3(32), &RouteConfig::DEEPSEEK_V3, Some(2048),
    /// )?;
    /// // Per step: step.plan(&k, &batch) once; per layer: step.layer(..) on this rank's
    /// // sequences, the engine's o_proj / norm / gate GEMM, then the collective
    /// // moe.forward(&k, &comm, &weights, &logits, &x, &mut out), weights holding the
    /// // experts moe.local_experts().
    /// # let _ = (&mut step, &mut moe);
    /// # Ok(())
    /// # }
    /// ```
    pub fn forward<L, X, O>(
        &mut self,
        k: &DsaKernels,
        comm: &Comm,
        w: &MoeWeights<'_>,
        logits: &L,
        x: &X,
        out: &mut O,
    ) -> Result<()>
    where
        L: DevicePtr<f32>,
        X: DevicePtr<bf16>,
        O: DevicePtrMut<bf16>,
    {
        if comm.stream().cu_stream() != k.stream().cu_stream()
            || comm.rank() != self.rank
            || comm.world_size() != self.part.ranks()
        {
            return Err(DsaError::Unsupported {
                what: "expert-parallel communicator",
                detail: "the kernels must launch on the communicator's stream, and the \
                         communicator must be the one the layer was created for"
                    .into(),
            });
        }
        self.dispatch(k, w, logits, x)?;
        let (c, hd) = (self.capacity, self.route_shape.hidden);
        let hb = hd / MOE_BLOCK;
        {
            let (send, recv) = (&self.send, &mut self.recv);
            exchange(comm, "expert-parallel dispatch", |peer, comm| {
                pair(comm, &send.codes, &mut recv.codes, peer, c * hd)?;
                pair(comm, &send.scales, &mut recv.scales, peer, c * hb)?;
                pair(comm, &send.experts, &mut recv.experts, peer, c)
            })?;
        }
        self.run_experts(k, w)?;
        {
            let (send, recv) = (&self.ret_send, &mut self.ret_recv);
            exchange(comm, "expert-parallel return", |peer, comm| {
                pair(comm, send, recv, peer, c * hd)
            })?;
        }
        self.combine(k, w, x, out)
    }
}

/// One NCCL group in which `each(peer)` posts this rank's send to and receive from every
/// peer (itself included); the group is closed even when a call failed.
#[cfg(feature = "nccl")]
fn exchange<F>(comm: &Comm, what: &'static str, mut each: F) -> Result<()>
where
    F: FnMut(usize, &Comm) -> Result<()>,
{
    group_start().map_err(nccl_err(what))?;
    let posted = (0..comm.world_size()).try_for_each(|peer| each(peer, comm));
    let closed = group_end().map_err(nccl_err(what));
    posted?;
    closed.map(|_| ())
}

/// Posts message `peer` of `send` (elements `[peer len, (peer + 1) len)`) to `peer` and
/// the receive of `peer`'s message into the same range of `recv`.
#[cfg(feature = "nccl")]
fn pair<T: NcclType + cudarc::driver::DeviceRepr>(
    comm: &Comm,
    send: &CudaSlice<T>,
    recv: &mut CudaSlice<T>,
    peer: usize,
    len: usize,
) -> Result<()> {
    let range = peer * len..(peer + 1) * len;
    let p = peer as i32;
    comm.send(&send.slice(range.clone()), p)
        .map_err(nccl_err("expert-parallel send"))?;
    comm.recv(&mut recv.slice_mut(range), p)
        .map_err(nccl_err("expert-parallel receive"))?;
    Ok(())
}
