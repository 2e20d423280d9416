//! The plan of a routing: where every slot's row goes in the grouped-GEMM row space.
use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, CudaView, DevicePtr, LaunchConfig, SyncOnDrop};

use super::shape::PlanSections;
use super::{MoeLayout, MoeShape};
use crate::check;
use crate::error::{DsaError, Result};
use crate::runtime::DsaKernels;
use crate::sys::moe::{DsaMoePlanParams, DSA_MOE_PLAN_THREADS};

/// The device-resident plan of one routing (one i32 buffer, allocated once per shape by
/// [`MoePlan::new`] and rewritten by every [`DsaKernels::moe_plan`]). Its arrays, each
/// readable as a view:
///
/// * [`counts`](Self::counts) `[E]`: slots routed to each expert (before the masked cap);
/// * [`offsets`](Self::offsets) `[E + 1]`: first row of each expert's segment, the last
///   entry the rows in use (contiguous: segments padded to the alignment, equal to
///   `dsa_reference::moe::permute_contiguous`'s `offsets`; masked: `e * max_m`);
/// * [`row_of`](Self::row_of) `[T * k]`: row of each slot `t * k + j`, `-1` when the slot
///   is dropped (id outside `[0, E)`, or past `max_m` in the masked layout);
/// * [`src`](Self::src) `[rows]`: slot of each row, `-1` on padding rows;
/// * [`m_indices`](Self::m_indices) `[rows]` (contiguous): expert of each row, `-1` on
///   padding rows and on the tail past `offsets[E]` (the grouped GEMM's input);
/// * [`masked_m`](Self::masked_m) `[E]` (masked): valid rows per expert, `min(count, max_m)`;
/// * [`status`](Self::status) `[2]`: `[overflow, rows in use]`, overflow 1 when some
///   expert got more than `max_m` slots (masked; never in the contiguous layout, whose
///   capacity is the worst case). Read it after the layer, whenever convenient: nothing
///   on the device waits for the host.
///
/// Rows inside an expert are in slot order (token, then choice): the plan is a pure
/// function of the ids.
#[derive(Debug)]
pub struct MoePlan {
    buf: CudaSlice<i32>,
    shape: MoeShape,
    sec: PlanSections,
}

impl MoePlan {
    /// Allocates the plan of `shape` (its tokens, experts, top_k, alignment and layout
    /// fix the sizes; [`MoeShape::plan_len`] i32 elements). Allocation happens here, once,
    /// not on the per-layer path.
    pub fn new(stream: &Arc<CudaStream>, shape: &MoeShape) -> Result<Self> {
        shape.validate()?;
        let sec = PlanSections::of(shape)?;
        let buf = stream.alloc_zeros::<i32>(sec.total)?;
        Ok(Self {
            buf,
            shape: *shape,
            sec,
        })
    }

    /// The shape the plan was made for.
    pub fn shape(&self) -> &MoeShape {
        &self.shape
    }

    fn view(&self, at: usize, len: usize) -> CudaView<'_, i32> {
        self.buf.slice(at..at + len)
    }

    pub fn counts(&self) -> CudaView<'_, i32> {
        self.view(self.sec.counts, self.shape.experts)
    }
    pub fn offsets(&self) -> CudaView<'_, i32> {
        self.view(self.sec.offsets, self.shape.experts + 1)
    }
    pub fn row_of(&self) -> CudaView<'_, i32> {
        self.view(self.sec.row_of, self.shape.tokens * self.shape.top_k)
    }
    pub fn src(&self) -> CudaView<'_, i32> {
        self.view(self.sec.src, self.rows())
    }
    /// `None` in the masked layout.
    pub fn m_indices(&self) -> Option<CudaView<'_, i32>> {
        match self.shape.layout {
            MoeLayout::Contiguous => Some(self.view(self.sec.m_indices, self.rows())),
            MoeLayout::Masked { .. } => None,
        }
    }
    /// `None` in the contiguous layout.
    pub fn masked_m(&self) -> Option<CudaView<'_, i32>> {
        match self.shape.layout {
            MoeLayout::Contiguous => None,
            MoeLayout::Masked { .. } => Some(self.view(self.sec.masked_m, self.shape.experts)),
        }
    }
    pub fn status(&self) -> CudaView<'_, i32> {
        self.view(self.sec.status, 2)
    }

    /// Rows of the GEMM row space (validated at creation).
    pub fn rows(&self) -> usize {
        self.shape.rows().unwrap_or(0)
    }

    /// Device address of element `at` (for the kernels' parameter structs).
    pub(crate) fn ptr<'a>(
        &'a self,
        stream: &'a Arc<CudaStream>,
        at: usize,
    ) -> (*const i32, SyncOnDrop<'a>) {
        let (p, g) = self.buf.device_ptr(stream);
        ((p + 4 * at as u64) as *const i32, g)
    }

    pub(crate) fn sections(&self) -> &PlanSections {
        &self.sec
    }

    /// Fails unless the plan was made for the routing-relevant part of `shape`.
    pub(crate) fn check_for(&self, shape: &MoeShape) -> Result<()> {
        let p = &self.shape;
        let same = p.tokens == shape.tokens
            && p.experts == shape.experts
            && p.top_k == shape.top_k
            && p.align == shape.align
            && p.layout == shape.layout;
        if !same {
            return Err(DsaError::Shape {
                what: "MoE plan (made for another tokens / experts / top_k / align / layout)",
                expected: vec![shape.tokens, shape.experts, shape.top_k, shape.align.rows()],
                got: vec![p.tokens, p.experts, p.top_k, p.align.rows()],
            });
        }
        Ok(())
    }
}

impl DsaKernels {
    /// Plans the routing `ids` (i32 `[tokens, top_k]`, device-resident; ids outside
    /// `[0, experts)` are dropped slots) into `plan` (made for `shape`): per-expert counts,
    /// aligned offsets, row map, `m_indices` or `masked_m`, overflow flag. Two small
    /// launches, no host synchronization, no atomics that could reorder rows: capturable
    /// in a CUDA graph.
    pub fn moe_plan<I>(&self, shape: &MoeShape, ids: &I, plan: &mut MoePlan) -> Result<()>
    where
        I: DevicePtr<i32>,
    {
        shape.validate()?;
        plan.check_for(shape)?;
        let slots = shape.slots()?;
        check::at_least("MoE ids", ids.len(), slots, &[shape.tokens, shape.top_k])?;
        let rows = shape.rows()?;
        let sec = *plan.sections();
        let mut a = self.args();
        let ip = a.read("MoE ids", ids, 4)?;
        let base = a.write("MoE plan", &mut plan.buf, 4)?;
        // Offsets of PlanSections of this shape, inside the plan's buffer.
        let at = |off: usize| base.wrapping_add(off);
        let masked = matches!(shape.layout, MoeLayout::Masked { .. });
        let max_m = match shape.layout {
            MoeLayout::Masked { max_m } => max_m,
            MoeLayout::Contiguous => 0,
        };
        let params = DsaMoePlanParams {
            ids: ip,
            counts: at(sec.counts),
            offsets: at(sec.offsets),
            row_of: at(sec.row_of),
            src: at(sec.src),
            m_indices: if masked {
                std::ptr::null_mut()
            } else {
                at(sec.m_indices)
            },
            masked_m: if masked {
                at(sec.masked_m)
            } else {
                std::ptr::null_mut()
            },
            status: at(sec.status),
            slots: slots as i32,
            experts: shape.experts as i32,
            align: shape.align.rows() as i32,
            masked: i32::from(masked),
            max_m: max_m as i32,
            rows: rows as i32,
        };
        let block = (DSA_MOE_PLAN_THREADS, 1, 1);
        let count = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: block,
            shared_mem_bytes: 0,
        };
        let scatter = LaunchConfig {
            grid_dim: (shape.experts as u32 + 1, 1, 1),
            block_dim: block,
            shared_mem_bytes: 0,
        };
        // SAFETY: ids holds `slots` values; every plan array has the size the kernels
        // index (PlanSections of this shape, checked by check_for); the kernels bound
        // every row by `rows`.
        unsafe {
            self.launch("moe_plan", "dsa_moe_plan_count", count, &params)?;
            a.launch("moe_plan", "dsa_moe_plan_scatter", scatter, &params)
        }
    }
}
