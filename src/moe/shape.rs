//! The shape of one MoE layer call and every buffer size derived from it (checked
//! arithmetic: an overflow is an `Err`, never a wrapped size).
use crate::check;
use crate::error::{DsaError, Result};
use crate::sys::moe::{DSA_MOE_BLOCK, DSA_MOE_MAX_EXPERTS, DSA_MOE_MAX_GROUPS, DSA_MOE_MAX_TOP_K};

/// FP8 block width of activations and weights (1x128 and 128x128 blocks).
pub const MOE_BLOCK: usize = DSA_MOE_BLOCK as usize;
/// Largest expert count the routing and plan kernels take.
pub const MOE_MAX_EXPERTS: usize = DSA_MOE_MAX_EXPERTS as usize;
/// Largest `top_k`.
pub const MOE_MAX_TOP_K: usize = DSA_MOE_MAX_TOP_K as usize;
/// Largest number of expert groups of the routing.
pub const MOE_MAX_GROUPS: usize = DSA_MOE_MAX_GROUPS as usize;

/// Row alignment of each expert's segment in the contiguous layout: the grouped GEMM's
/// block M, so every block of rows belongs to one expert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Align {
    /// 128 rows (the default; DeepGEMM's layout).
    #[default]
    A128,
    /// 64 rows: half the padding for small experts (decode), needs the GEMM's 64-row tiles.
    A64,
}

impl Align {
    /// Rows per alignment unit.
    pub fn rows(self) -> usize {
        match self {
            Align::A128 => 128,
            Align::A64 => 64,
        }
    }
}

/// How the routed rows are laid out for the grouped GEMM (spec section 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoeLayout {
    /// Experts' rows stacked, each segment padded to a multiple of the alignment;
    /// `m_indices[row]` names the expert, `-1` on padding rows. Capacity
    /// `round_up(tokens * top_k + experts * (align - 1), align)` rows: the worst case of
    /// any routing, so the buffers never depend on the routing.
    Contiguous,
    /// `[experts, max_m]` rows with `masked_m[e]` valid rows per expert (the
    /// expert-parallel decode layout). An expert routed more than `max_m` slots keeps its
    /// first `max_m` (in slot order), the rest are dropped and the plan's overflow flag is
    /// set. `max_m` is a positive multiple of 64.
    Masked { max_m: usize },
}

/// Everything a layer call's buffer sizes depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoeShape {
    /// Tokens `T` of this call (may be 0).
    pub tokens: usize,
    /// Hidden size `H` (the w13 GEMM's K and the w2 GEMM's N), a multiple of 128.
    pub hidden: usize,
    /// Expert intermediate size `I` (w13 produces `2 I` columns: `[gate | up]`), a
    /// multiple of 128.
    pub inter: usize,
    /// Routed experts `E`, `1..=1024`.
    pub experts: usize,
    /// Slots per token `k`, `1..=32` (experts per token; for routing at most the experts
    /// of the kept groups, see [`RouteConfig::validate`](super::RouteConfig::validate)).
    pub top_k: usize,
    /// Segment alignment of the contiguous layout; in the masked layout the padding rows
    /// written (zero codes) reach the next multiple of it.
    pub align: Align,
    pub layout: MoeLayout,
    /// Activation scales rounded up to a power of two (UE8M0), as DeepGEMM's
    /// `scale_ue8m0` option.
    pub ue8m0: bool,
}

fn overflow(what: &'static str) -> DsaError {
    DsaError::Capacity {
        what,
        needed: usize::MAX,
        capacity: i32::MAX as usize,
    }
}

/// `a * b` that must fit the kernels' 32-bit row and slot indices.
fn mul_i32(what: &'static str, a: usize, b: usize) -> Result<usize> {
    let v = a.checked_mul(b).ok_or_else(|| overflow(what))?;
    check::fits_i32(what, v)?;
    Ok(v)
}

/// `a * b`, or a capacity error naming `what` when it overflows usize.
pub(crate) fn mul(what: &'static str, a: usize, b: usize) -> Result<usize> {
    check::product(what, &[a, b])
}

impl MoeShape {
    /// DeepSeek-V3's expert shape (hidden 7168, inter 2048, 256 experts, top 8), 128-row
    /// contiguous layout, f32 scales.
    pub fn deepseek_v3(tokens: usize) -> Self {
        Self {
            tokens,
            hidden: 7168,
            inter: 2048,
            experts: 256,
            top_k: 8,
            align: Align::A128,
            layout: MoeLayout::Contiguous,
            ue8m0: false,
        }
    }

    /// Checks every scalar and that every size fits (the row space in i32, buffers in
    /// usize).
    pub fn validate(&self) -> Result<()> {
        let unsupported = |what, detail: String| Err(DsaError::Unsupported { what, detail });
        if self.experts == 0 || self.experts > MOE_MAX_EXPERTS {
            return unsupported(
                "MoE experts",
                format!("{} experts, must be in 1..={MOE_MAX_EXPERTS}", self.experts),
            );
        }
        // top_k may exceed the experts: a plan over ranks (the expert-parallel dispatch)
        // sends several slots of a token to one rank. Routing needs top_k distinct experts,
        // which RouteConfig::validate checks.
        if self.top_k == 0 || self.top_k > MOE_MAX_TOP_K {
            return unsupported(
                "MoE top_k",
                format!("top_k = {} must be in 1..={}", self.top_k, MOE_MAX_TOP_K),
            );
        }
        for (what, v) in [
            ("MoE hidden size", self.hidden),
            ("MoE inter size", self.inter),
        ] {
            if v == 0 || v % MOE_BLOCK != 0 {
                return unsupported(what, format!("{v} must be a positive multiple of 128"));
            }
        }
        if let MoeLayout::Masked { max_m } = self.layout {
            if max_m == 0 || max_m % 64 != 0 {
                return unsupported(
                    "MoE masked max_m",
                    format!("max_m = {max_m} must be a positive multiple of 64"),
                );
            }
        }
        // Every derived size, so no later call can overflow.
        let rows = self.rows()?;
        check::fits_i32("MoE row stride", mul("MoE h", 2, self.inter)?)?;
        self.scales_len(self.hidden)?;
        mul("MoE h", rows, mul("MoE h", 2, self.inter)?)?;
        mul("MoE activations", rows, self.hidden)?;
        mul("MoE tokens", self.tokens, self.hidden)?;
        Ok(())
    }

    /// Slots `tokens * top_k` (one per (token, choice)).
    pub fn slots(&self) -> Result<usize> {
        mul_i32("MoE slots (tokens * top_k)", self.tokens, self.top_k)
    }

    /// Rows of the GEMM row space: contiguous `round_up(T k + E (align - 1), align)`,
    /// masked `E * max_m`.
    pub fn rows(&self) -> Result<usize> {
        const WHAT: &str = "MoE rows";
        match self.layout {
            MoeLayout::Contiguous => {
                let a = self.align.rows();
                mul_i32(WHAT, self.experts, a - 1)?;
                self.slots()?;
                super::gemm::contiguous_capacity(self.tokens, self.top_k, self.experts, a)
            }
            MoeLayout::Masked { max_m } => mul_i32(WHAT, self.experts, max_m),
        }
    }

    /// Elements between scale columns of the MN-major activation scales: contiguous
    /// `round_up(rows, 4)` (TMA wants 16-byte columns), masked `max_m`.
    pub fn scale_stride(&self) -> Result<usize> {
        match self.layout {
            MoeLayout::Contiguous => {
                let r = super::gemm::sfa_row_stride(self.rows()?);
                check::fits_i32("MoE scale stride", r)?;
                Ok(r)
            }
            MoeLayout::Masked { max_m } => Ok(max_m),
        }
    }

    /// f32 scales of an activation with `cols` columns: contiguous `[cols / 128,
    /// scale_stride]`, masked `[E, cols / 128, max_m]`.
    pub fn scales_len(&self, cols: usize) -> Result<usize> {
        let kb = cols / MOE_BLOCK;
        match self.layout {
            MoeLayout::Contiguous => mul("MoE scales", kb, self.scale_stride()?),
            MoeLayout::Masked { max_m } => {
                mul("MoE scales", mul("MoE scales", self.experts, kb)?, max_m)
            }
        }
    }

    /// e4m3 codes of the w13 GEMM's A: `[rows, hidden]`.
    pub fn a1_len(&self) -> Result<usize> {
        mul("MoE activations", self.rows()?, self.hidden)
    }

    /// f32 scales of the w13 GEMM's A.
    pub fn sfa1_len(&self) -> Result<usize> {
        self.scales_len(self.hidden)
    }

    /// bf16 w13 output `[rows, 2 inter]`.
    pub fn h_len(&self) -> Result<usize> {
        mul("MoE h", self.rows()?, mul("MoE h", 2, self.inter)?)
    }

    /// e4m3 codes of the w2 GEMM's A: `[rows, inter]`.
    pub fn a2_len(&self) -> Result<usize> {
        mul("MoE activations", self.rows()?, self.inter)
    }

    /// f32 scales of the w2 GEMM's A.
    pub fn sfa2_len(&self) -> Result<usize> {
        self.scales_len(self.inter)
    }

    /// bf16 w2 output `[rows, hidden]`.
    pub fn y_len(&self) -> Result<usize> {
        mul("MoE activations", self.rows()?, self.hidden)
    }

    /// Elements of the plan buffer ([`crate::moe::MoePlan`]).
    pub fn plan_len(&self) -> Result<usize> {
        Ok(PlanSections::of(self)?.total)
    }
}

/// Offsets of the plan's arrays inside its one i32 buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PlanSections {
    pub counts: usize,
    pub offsets: usize,
    pub masked_m: usize,
    pub status: usize,
    pub row_of: usize,
    pub src: usize,
    pub m_indices: usize,
    pub total: usize,
}

impl PlanSections {
    pub fn of(shape: &MoeShape) -> Result<Self> {
        let e = shape.experts;
        let rows = shape.rows()?;
        let slots = shape.slots()?;
        let m_idx = match shape.layout {
            MoeLayout::Contiguous => rows,
            MoeLayout::Masked { .. } => 0,
        };
        // Small arrays first; each array starts on a 16-byte boundary.
        let up = |x: usize| x.next_multiple_of(4);
        let counts = 0;
        let offsets = up(counts + e);
        let masked_m = up(offsets + e + 1);
        let status = up(masked_m + e);
        let row_of = status + 4;
        let src = up(row_of + slots);
        let m_indices = up(src + rows);
        let total = m_indices
            .checked_add(m_idx)
            .ok_or_else(|| overflow("MoE plan"))?;
        Ok(Self {
            counts,
            offsets,
            masked_m,
            status,
            row_of,
            src,
            m_indices,
            total,
        })
    }
}
