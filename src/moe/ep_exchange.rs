//! Device side of the expert-parallel bookkeeping (layouts in
//! [`expert_parallel`](super::expert_parallel)): the routing mapped to destination ranks,
//! the local expert id of each send row, the received FP8 rows into the masked layout,
//! and the expert outputs back into message order. Transport-agnostic: the runner over
//! NCCL uses them, an engine with its own transport can too.
use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig};
use half::bf16;

use super::expert_parallel::EpPartition;
use super::shape::mul;
use super::{MoeLayout, MoePlan, MoeShape, MOE_BLOCK};
use crate::check;
use crate::error::{DsaError, Result};
use crate::runtime::DsaKernels;
use crate::sys::moe_ep::{
    DsaMoeEpGatherParams, DsaMoeEpIdsParams, DsaMoeEpRowsParams, DSA_MOE_EP_THREADS,
};

impl DsaKernels {
    /// A grid-stride launch over `items` of `per_cta` items each, at most 8 CTAs per SM.
    fn ep_launch(&self, items: usize, per_cta: usize) -> LaunchConfig {
        let max_ctas = self.sm_count() * 8;
        LaunchConfig {
            grid_dim: (items.div_ceil(per_cta).clamp(1, max_ctas) as u32, 1, 1),
            block_dim: (DSA_MOE_EP_THREADS, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    /// `rank_ids[slot]` = the rank holding expert `ids[slot]` (`-1` for an id outside
    /// `[0, E)`): the routing `[slots]` mapped to destinations, the input of the send
    /// plan ([`Self::moe_plan`] over `experts = ranks`).
    pub fn moe_ep_rank_ids<I, R>(
        &self,
        part: &EpPartition,
        slots: usize,
        ids: &I,
        rank_ids: &mut R,
    ) -> Result<()>
    where
        I: DevicePtr<i32>,
        R: DevicePtrMut<i32>,
    {
        check::fits_i32("expert-parallel slots", slots)?;
        check::at_least("MoE ids", ids.len(), slots, &[slots])?;
        check::at_least("expert-parallel rank ids", rank_ids.len(), slots, &[slots])?;
        if slots == 0 {
            return Ok(());
        }
        let mut a = self.args();
        let params = DsaMoeEpIdsParams {
            ids: a.read("MoE ids", ids, 4)?,
            send_src: std::ptr::null(),
            rank_ids: a.write("expert-parallel rank ids", rank_ids, 4)?,
            send_experts: std::ptr::null_mut(),
            slots: slots as i32,
            experts: part.experts() as i32,
            experts_per_rank: part.experts_per_rank() as i32,
            send_rows: 0,
            capacity: 1,
            reserved: 0,
        };
        let cfg = self.ep_launch(slots, DSA_MOE_EP_THREADS as usize);
        // SAFETY: ids and rank_ids hold `slots` elements (checked); the kernel touches
        // nothing else.
        unsafe { a.launch("moe_ep", "dsa_moe_ep_rank_ids", cfg, &params) }
    }

    /// `send_experts[r]` = the local expert id on the destination of send row `r` of
    /// `send_plan` (made for `send_shape`: experts = ranks, masked with `max_m` = the
    /// message rows), from the routing `ids` `[tokens, top_k]`; `-1` on message tails.
    pub fn moe_ep_send_experts<I, S>(
        &self,
        part: &EpPartition,
        send_shape: &MoeShape,
        send_plan: &MoePlan,
        ids: &I,
        send_experts: &mut S,
    ) -> Result<()>
    where
        I: DevicePtr<i32>,
        S: DevicePtrMut<i32>,
    {
        let capacity = message_rows(part, send_shape)?;
        send_plan.check_for(send_shape)?;
        let slots = send_shape.slots()?;
        let rows = send_shape.rows()?;
        check::at_least(
            "MoE ids",
            ids.len(),
            slots,
            &[send_shape.tokens, send_shape.top_k],
        )?;
        check::at_least(
            "expert-parallel send experts",
            send_experts.len(),
            rows,
            &[rows],
        )?;
        let stream = self.stream().clone();
        let mut a = self.args();
        let (src, _plan_guard) = send_plan.ptr(&stream, send_plan.sections().src);
        let params = DsaMoeEpIdsParams {
            ids: a.read("MoE ids", ids, 4)?,
            send_src: src,
            rank_ids: std::ptr::null_mut(),
            send_experts: a.write("expert-parallel send experts", send_experts, 4)?,
            slots: slots as i32,
            experts: part.experts() as i32,
            experts_per_rank: part.experts_per_rank() as i32,
            send_rows: rows as i32,
            capacity: capacity as i32,
            reserved: 0,
        };
        let cfg = self.ep_launch(rows, DSA_MOE_EP_THREADS as usize);
        // SAFETY: send_src is the plan's `rows` entries, send_experts holds `rows`, ids
        // `slots` (the kernel reads ids only at src values in [0, slots)).
        unsafe { a.launch("moe_ep", "dsa_moe_ep_send_experts", cfg, &params) }
    }

    /// The received FP8 rows (`recv_codes` e4m3 `[ranks * C, hidden]`, `recv_scales` f32
    /// `[ranks, hidden / 128, C]`: each message's rows as the sender's masked permutation
    /// wrote them) into the masked layout of `recv_plan` (made for `recv_shape`: the
    /// received rows as slots with `top_k = 1`, experts = the local experts): `a` e4m3
    /// `[E / N, max_m, hidden]`, `sfa` f32 `[E / N, hidden / 128, max_m]`, the w13 GEMM's
    /// operands. Padding rows up to the alignment get zero codes and zero scales.
    #[allow(clippy::too_many_arguments)]
    pub fn moe_ep_gather_fp8<C, S, A, F>(
        &self,
        recv_shape: &MoeShape,
        recv_plan: &MoePlan,
        capacity: usize,
        recv_codes: &C,
        recv_scales: &S,
        a: &mut A,
        sfa: &mut F,
    ) -> Result<()>
    where
        C: DevicePtr<u8>,
        S: DevicePtr<f32>,
        A: DevicePtrMut<u8>,
        F: DevicePtrMut<f32>,
    {
        recv_shape.validate()?;
        recv_plan.check_for(recv_shape)?;
        let MoeLayout::Masked { max_m } = recv_shape.layout else {
            return Err(DsaError::Unsupported {
                what: "expert-parallel receive layout",
                detail: "the received rows are laid out masked".into(),
            });
        };
        let recv_rows = recv_shape.slots()?;
        if recv_shape.top_k != 1 || capacity == 0 || recv_rows % capacity != 0 {
            return Err(DsaError::Unsupported {
                what: "expert-parallel receive shape",
                detail: format!(
                    "top_k {} (must be 1), {recv_rows} received rows in messages of {capacity}",
                    recv_shape.top_k
                ),
            });
        }
        let h = recv_shape.hidden;
        let kb = h / MOE_BLOCK;
        check::at_least(
            "expert-parallel received codes",
            recv_codes.len(),
            mul("expert-parallel received codes", recv_rows, h)?,
            &[recv_rows, h],
        )?;
        check::at_least(
            "expert-parallel received scales",
            recv_scales.len(),
            mul("expert-parallel received scales", recv_rows, kb)?,
            &[recv_rows / capacity, kb, capacity],
        )?;
        check::at_least(
            "MoE a1",
            a.len(),
            recv_shape.a1_len()?,
            &[recv_shape.rows()?, h],
        )?;
        check::at_least(
            "MoE sfa1",
            sfa.len(),
            recv_shape.sfa1_len()?,
            &[recv_shape.sfa1_len()?],
        )?;
        let stream = self.stream().clone();
        let mut args = self.args();
        let cp = args.read("expert-parallel received codes", recv_codes, 16)?;
        let sp = args.read("expert-parallel received scales", recv_scales, 4)?;
        let ap = args.write("MoE a1", a, 16)?;
        let fp = args.write("MoE sfa1", sfa, 4)?;
        let sec = *recv_plan.sections();
        let (base, _plan_guard) = recv_plan.ptr(&stream, 0);
        let rows = recv_shape.rows()?;
        // SAFETY: offsets inside the plan's one buffer (PlanSections of this shape).
        let (src, masked_m) = unsafe { (base.add(sec.src), base.add(sec.masked_m)) };
        let params = DsaMoeEpGatherParams {
            recv_codes: cp,
            recv_scales: sp,
            src,
            masked_m,
            codes: ap,
            scales: fp,
            groups: recv_shape.experts as i32,
            max_m: max_m as i32,
            cols: h as i32,
            capacity: capacity as i32,
            recv_rows: recv_rows as i32,
            align: recv_shape.align.rows() as i32,
        };
        let cfg = self.ep_launch(rows, DSA_MOE_EP_THREADS as usize / 32);
        // SAFETY: every buffer was checked against the shape; the kernel reads received
        // rows only at src values in [0, recv_rows) and writes masked rows below max_m.
        unsafe { args.launch("moe_ep", "dsa_moe_ep_gather_fp8", cfg, &params) }
    }

    /// `out[r] = input[index[r]]` for `index[r]` in `[0, in_rows)`, zeros otherwise: bf16
    /// rows of `cols` elements (a multiple of 8; buffers 16-byte aligned). With the
    /// receive plan's `row_of` as index, the expert outputs of the masked layout back in
    /// message order (the return trip).
    pub fn moe_ep_gather_rows<X, I, O>(
        &self,
        rows: usize,
        in_rows: usize,
        cols: usize,
        input: &X,
        index: &I,
        out: &mut O,
    ) -> Result<()>
    where
        X: DevicePtr<bf16>,
        I: DevicePtr<i32>,
        O: DevicePtrMut<bf16>,
    {
        if cols == 0 || !cols.is_multiple_of(8) {
            return Err(DsaError::Unsupported {
                what: "expert-parallel row gather",
                detail: format!("{cols} columns, must be a positive multiple of 8"),
            });
        }
        check::fits_i32("expert-parallel row gather rows", rows)?;
        check::fits_i32("expert-parallel row gather input rows", in_rows)?;
        check::fits_i32("expert-parallel row gather columns", cols)?;
        check::at_least(
            "expert-parallel row gather input",
            input.len(),
            mul("expert-parallel row gather input", in_rows, cols)?,
            &[in_rows, cols],
        )?;
        check::at_least(
            "expert-parallel row gather index",
            index.len(),
            rows,
            &[rows],
        )?;
        check::at_least(
            "expert-parallel row gather output",
            out.len(),
            mul("expert-parallel row gather output", rows, cols)?,
            &[rows, cols],
        )?;
        if rows == 0 {
            return Ok(());
        }
        let mut a = self.args();
        let params = DsaMoeEpRowsParams {
            in_: a.read::<bf16, _>("expert-parallel row gather input", input, 16)? as *const u16,
            index: a.read("expert-parallel row gather index", index, 4)?,
            out: a.write::<bf16, _>("expert-parallel row gather output", out, 16)? as *mut u16,
            rows: rows as i32,
            in_rows: in_rows as i32,
            cols: cols as i32,
            reserved: 0,
        };
        let cfg = self.ep_launch(rows, DSA_MOE_EP_THREADS as usize / 32);
        // SAFETY: input holds in_rows rows, index and out `rows` (checked); the kernel
        // reads input only at indices in [0, in_rows).
        unsafe { a.launch("moe_ep", "dsa_moe_ep_gather_rows", cfg, &params) }
    }
}

/// The message rows `C` of a send shape: its masked `max_m`, over `experts = ranks`.
fn message_rows(part: &EpPartition, send_shape: &MoeShape) -> Result<usize> {
    send_shape.validate()?;
    match send_shape.layout {
        MoeLayout::Masked { max_m } if send_shape.experts == part.ranks() => Ok(max_m),
        _ => Err(DsaError::Unsupported {
            what: "expert-parallel send shape",
            detail: format!(
                "must be masked over the {} ranks (got {} experts, {:?})",
                part.ranks(),
                send_shape.experts,
                send_shape.layout
            ),
        }),
    }
}
