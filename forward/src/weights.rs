//! The checkpoint on the device, in the layouts the kernels take.
use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream};
use dsa_reference::linear::Fp8Weight;
use dsa_reference::weights::{self, names, Tensors};
use dsa_reference::Config;
use half::bf16;

use crate::{ForwardError, Result};

/// An FP8 weight `[n, k]` (e4m3 codes, K-major) with f32 128x128 block scales
/// `[n / 128, k / 128]`; `n` and `k` are multiples of 128 (parts are padded with zero rows).
pub struct Fp8Linear {
    pub codes: CudaSlice<u8>,
    pub scales: CudaSlice<f32>,
    pub n: usize,
    pub k: usize,
}

/// Host codes and scales of FP8 weights stacked along the output rows, each part padded
/// to a multiple of 128 rows with zero codes (its last scale block already covers them).
fn stack(parts: &[&Fp8Weight]) -> Result<(Vec<u8>, Vec<f32>, usize, usize)> {
    let k = parts[0].in_features;
    if !k.is_multiple_of(128) || parts.iter().any(|p| p.in_features != k) {
        return Err(ForwardError::Input(format!(
            "stacked FP8 weights need one input width, a multiple of 128 (got {k})"
        )));
    }
    let (mut codes, mut scales, mut n) = (Vec::new(), Vec::new(), 0);
    for p in parts {
        let rows = p.out_features.div_ceil(128) * 128;
        codes.extend_from_slice(&p.codes);
        codes.resize(codes.len() + (rows - p.out_features) * k, 0);
        scales.extend_from_slice(&p.scale_inv);
        n += rows;
    }
    Ok((codes, scales, n, k))
}

impl Fp8Linear {
    fn upload(stream: &Arc<CudaStream>, parts: &[&Fp8Weight]) -> Result<Self> {
        let (codes, scales, n, k) = stack(parts)?;
        Ok(Self {
            codes: stream.clone_htod(&codes)?,
            scales: stream.clone_htod(&scales)?,
            n,
            k,
        })
    }
}

/// A dense SwiGLU MLP: `w13` = `[gate; up]` `[2 inter, hidden]`, `w2` `[hidden, inter]`.
pub struct DenseMlp {
    pub inter: usize,
    pub w13: Fp8Linear,
    pub w2: Fp8Linear,
}

/// A routed-MoE layer: f32 gate `[E, hidden]` and bias `[E]`, experts stacked (`w13`
/// `[E, 2I, H]`, `w2` `[E, H, I]`, scales likewise), the shared expert.
pub struct MoeWeightsDev {
    pub gate: CudaSlice<f32>,
    pub bias: CudaSlice<f32>,
    pub w13_codes: CudaSlice<u8>,
    pub w13_scales: CudaSlice<f32>,
    pub w2_codes: CudaSlice<u8>,
    pub w2_scales: CudaSlice<f32>,
    pub shared: DenseMlp,
}

/// A layer's FFN: the dense MLP of the first layers, or the routed MoE.
#[allow(clippy::large_enum_variant)] // one per layer, built once
pub enum Ffn {
    Dense(DenseMlp),
    Moe(MoeWeightsDev),
}

/// One decoder layer's weights.
pub struct LayerWeights {
    pub attn_norm: CudaSlice<f32>,
    pub ffn_norm: CudaSlice<f32>,
    /// `q_a_proj | kv_a_proj_with_mqa (576, padded to 640) | indexer.wk`: the three
    /// projections of the normalized input as one GEMM, `[q_lora + 640 + 128, hidden]`.
    pub wa: Fp8Linear,
    pub q_norm: CudaSlice<f32>,
    pub kv_norm: CudaSlice<f32>,
    /// `q_b_proj` `[heads * 192, q_lora]`.
    pub wq_b: Fp8Linear,
    /// `indexer.wq_b` `[64 * 128, q_lora]`.
    pub index_wq_b: Fp8Linear,
    pub index_k_norm_w: CudaSlice<f32>,
    pub index_k_norm_b: CudaSlice<f32>,
    /// `indexer.weights_proj` f32 `[64, hidden]`.
    pub index_weights_proj: CudaSlice<f32>,
    /// `kv_b_proj` dequantized to bf16, `[heads, nope + v, kv_lora]`: per head `W_UK`
    /// (128 rows) then `W_UV` (128 rows).
    pub kv_b: CudaSlice<bf16>,
    /// `o_proj` `[hidden, heads * 128]`.
    pub wo: Fp8Linear,
    pub ffn: Ffn,
}

/// The whole model on the device.
pub struct GpuWeights {
    pub cfg: Config,
    /// f32 `[vocab, hidden]`.
    pub embed: CudaSlice<f32>,
    pub final_norm: CudaSlice<f32>,
    /// f32 `[vocab, hidden]`.
    pub lm_head: CudaSlice<f32>,
    pub layers: Vec<LayerWeights>,
}

fn mlp(
    stream: &Arc<CudaStream>,
    t: &Tensors,
    prefix: &str,
    h: usize,
    inter: usize,
) -> Result<DenseMlp> {
    let w1 = weights::get_fp8(t, &format!("{prefix}.gate_proj"), inter, h)?;
    let w3 = weights::get_fp8(t, &format!("{prefix}.up_proj"), inter, h)?;
    let w2 = weights::get_fp8(t, &format!("{prefix}.down_proj"), h, inter)?;
    Ok(DenseMlp {
        inter,
        w13: Fp8Linear::upload(stream, &[&w1, &w3])?,
        w2: Fp8Linear::upload(stream, &[&w2])?,
    })
}

impl GpuWeights {
    /// Uploads a checkpoint's tensors (the names and shapes of `dsa_reference::weights`,
    /// from `weights::seeded` or `loader::load_dir`). The model's per-head dimensions must
    /// be DeepSeek-V3.2's (nope 128, rope 64, v 128, kv_lora 512, indexer 64 x 128) and
    /// every width a multiple of 128.
    pub fn upload(stream: &Arc<CudaStream>, cfg: &Config, t: &Tensors) -> Result<Self> {
        cfg.validate()
            .map_err(|e| ForwardError::Input(e.to_string()))?;
        let c = cfg;
        let (h, nh) = (c.hidden_size, c.num_attention_heads);
        if c.qk_nope_head_dim != 128
            || c.v_head_dim != 128
            || c.qk_rope_head_dim != 64
            || c.kv_lora_rank != 512
            || c.index_head_dim != 128
            || [
                h,
                c.q_lora_rank,
                c.intermediate_size,
                c.moe_intermediate_size,
            ]
            .iter()
            .any(|d| d % 128 != 0)
        {
            return Err(ForwardError::Input(
                "the forward needs DeepSeek-V3.2's per-head dims and widths that are multiples of 128".into(),
            ));
        }
        let f32v = |name: &str, shape: &[usize]| -> Result<CudaSlice<f32>> {
            Ok(stream.clone_htod(&weights::get_f32(t, name, shape)?)?)
        };
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let l = |s: &str| names::layer(i, s);
            let wq_a = weights::get_fp8(t, &l("self_attn.q_a_proj"), c.q_lora_rank, h)?;
            let wkv_a = weights::get_fp8(t, &l("self_attn.kv_a_proj_with_mqa"), 576, h)?;
            let wk = weights::get_fp8(t, &l("self_attn.indexer.wk"), c.index_head_dim, h)?;
            let wq_b = weights::get_fp8(
                t,
                &l("self_attn.q_b_proj"),
                nh * c.qk_head_dim(),
                c.q_lora_rank,
            )?;
            let iq_b = weights::get_fp8(
                t,
                &l("self_attn.indexer.wq_b"),
                c.index_n_heads * c.index_head_dim,
                c.q_lora_rank,
            )?;
            let kv_b = weights::get_fp8(t, &l("self_attn.kv_b_proj"), nh * 256, c.kv_lora_rank)?;
            let kv_b: Vec<bf16> = kv_b
                .dequantize()
                .iter()
                .map(|&v| bf16::from_f32(v))
                .collect();
            let wo = weights::get_fp8(t, &l("self_attn.o_proj"), h, nh * c.v_head_dim)?;
            let ffn = if c.is_moe_layer(i) {
                let (e, mi) = (c.n_routed_experts, c.moe_intermediate_size);
                let (mut w13c, mut w13s, mut w2c, mut w2s) = (vec![], vec![], vec![], vec![]);
                for j in 0..e {
                    let p = l(&format!("mlp.experts.{j}"));
                    let w1 = weights::get_fp8(t, &format!("{p}.gate_proj"), mi, h)?;
                    let w3 = weights::get_fp8(t, &format!("{p}.up_proj"), mi, h)?;
                    let w2 = weights::get_fp8(t, &format!("{p}.down_proj"), h, mi)?;
                    let (c13, s13, _, _) = stack(&[&w1, &w3])?;
                    w13c.extend(c13);
                    w13s.extend(s13);
                    w2c.extend_from_slice(&w2.codes);
                    w2s.extend_from_slice(&w2.scale_inv);
                }
                if c.n_shared_experts == 0 {
                    return Err(ForwardError::Input(
                        "the forward expects a shared expert".into(),
                    ));
                }
                Ffn::Moe(MoeWeightsDev {
                    gate: f32v(&l("mlp.gate.weight"), &[e, h])?,
                    bias: f32v(&l("mlp.gate.e_score_correction_bias"), &[e])?,
                    w13_codes: stream.clone_htod(&w13c)?,
                    w13_scales: stream.clone_htod(&w13s)?,
                    w2_codes: stream.clone_htod(&w2c)?,
                    w2_scales: stream.clone_htod(&w2s)?,
                    shared: mlp(
                        stream,
                        t,
                        &l("mlp.shared_experts"),
                        h,
                        mi * c.n_shared_experts,
                    )?,
                })
            } else {
                Ffn::Dense(mlp(stream, t, &l("mlp"), h, c.intermediate_size)?)
            };
            layers.push(LayerWeights {
                attn_norm: f32v(&l("input_layernorm.weight"), &[h])?,
                ffn_norm: f32v(&l("post_attention_layernorm.weight"), &[h])?,
                wa: Fp8Linear::upload(stream, &[&wq_a, &wkv_a, &wk])?,
                q_norm: f32v(&l("self_attn.q_a_layernorm.weight"), &[c.q_lora_rank])?,
                kv_norm: f32v(&l("self_attn.kv_a_layernorm.weight"), &[c.kv_lora_rank])?,
                wq_b: Fp8Linear::upload(stream, &[&wq_b])?,
                index_wq_b: Fp8Linear::upload(stream, &[&iq_b])?,
                index_k_norm_w: f32v(&l("self_attn.indexer.k_norm.weight"), &[c.index_head_dim])?,
                index_k_norm_b: f32v(&l("self_attn.indexer.k_norm.bias"), &[c.index_head_dim])?,
                index_weights_proj: f32v(
                    &l("self_attn.indexer.weights_proj.weight"),
                    &[c.index_n_heads, h],
                )?,
                kv_b: stream.clone_htod(&kv_b)?,
                wo: Fp8Linear::upload(stream, &[&wo])?,
                ffn,
            });
        }
        Ok(Self {
            embed: f32v(names::EMBED, &[c.vocab_size, h])?,
            final_norm: f32v(names::FINAL_NORM, &[h])?,
            lm_head: f32v(names::LM_HEAD, &[c.vocab_size, h])?,
            layers,
            cfg: cfg.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stacking_pads_each_part_to_whole_scale_blocks() {
        let w = |n: usize, k: usize, v: f32| Fp8Weight::quantize(n, k, &vec![v; n * k]);
        let (a, b) = (w(128, 256, 1.0), w(192, 256, -2.0));
        let (codes, scales, n, k) = stack(&[&a, &b]).unwrap();
        assert_eq!((n, k), (384, 256));
        assert_eq!(codes.len(), 384 * 256);
        // a's rows, then b's 192 rows, then 64 zero rows inside b's last scale block.
        assert_eq!(&codes[..128 * 256], &a.codes[..]);
        assert_eq!(&codes[128 * 256..320 * 256], &b.codes[..]);
        assert!(codes[320 * 256..].iter().all(|&c| c == 0));
        assert_eq!(scales.len(), 3 * 2);
        assert_eq!(&scales[2..], &b.scale_inv[..]);
        assert!(stack(&[&a, &w(128, 128, 1.0)]).is_err());
    }
}
