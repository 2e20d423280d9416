//! Named weight tensors in the Hugging Face checkpoint layout, and seeded random weights.
//!
//! Names follow the DeepSeek-V3.2 checkpoint (`model.layers.{i}.self_attn.q_a_proj.weight`
//! ...; see [`names`]). FP8 linears are an `F8_E4M3` `*.weight` `[out, in]` plus an F32
//! `*.weight_scale_inv` `[ceil(out/128), ceil(in/128)]`; norms, embeddings, the LM head,
//! the gate and the indexer's `weights_proj` are BF16 (the gate bias
//! `e_score_correction_bias` is F32).

use crate::config::Config;
use crate::error::ModelError;
use crate::fp8;
use crate::linear::{Fp8Weight, BLOCK};
use half::bf16;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use std::collections::BTreeMap;

/// One tensor: shape and data in its storage dtype.
#[derive(Clone, Debug, PartialEq)]
pub enum Tensor {
    /// e4m3 codes.
    F8E4M3 {
        /// Shape.
        shape: Vec<usize>,
        /// Codes, row-major.
        data: Vec<u8>,
    },
    /// bf16 values.
    Bf16 {
        /// Shape.
        shape: Vec<usize>,
        /// Values, row-major.
        data: Vec<bf16>,
    },
    /// f32 values.
    F32 {
        /// Shape.
        shape: Vec<usize>,
        /// Values, row-major.
        data: Vec<f32>,
    },
}

impl Tensor {
    /// The shape.
    pub fn shape(&self) -> &[usize] {
        match self {
            Tensor::F8E4M3 { shape, .. }
            | Tensor::Bf16 { shape, .. }
            | Tensor::F32 { shape, .. } => shape,
        }
    }

    /// The safetensors dtype name.
    pub fn dtype(&self) -> &'static str {
        match self {
            Tensor::F8E4M3 { .. } => "F8_E4M3",
            Tensor::Bf16 { .. } => "BF16",
            Tensor::F32 { .. } => "F32",
        }
    }

    /// The values widened to f32 (e4m3 codes decoded, without any scale).
    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            Tensor::F8E4M3 { data, .. } => data.iter().map(|&c| fp8::e4m3_to_f32(c)).collect(),
            Tensor::Bf16 { data, .. } => data.iter().map(|v| v.to_f32()).collect(),
            Tensor::F32 { data, .. } => data.clone(),
        }
    }
}

/// A checkpoint: tensors by name.
pub type Tensors = BTreeMap<String, Tensor>;

/// Tensor names of the DeepSeek-V3.2 checkpoint.
pub mod names {
    /// `model.embed_tokens.weight` `[vocab, hidden]`.
    pub const EMBED: &str = "model.embed_tokens.weight";
    /// `model.norm.weight` `[hidden]`.
    pub const FINAL_NORM: &str = "model.norm.weight";
    /// `lm_head.weight` `[vocab, hidden]`.
    pub const LM_HEAD: &str = "lm_head.weight";

    /// `model.layers.{i}.{suffix}`.
    pub fn layer(i: usize, suffix: &str) -> String {
        format!("model.layers.{i}.{suffix}")
    }

    /// Attention-side FP8 linears (prefix `self_attn.`): `q_a_proj`, `q_b_proj`,
    /// `kv_a_proj_with_mqa`, `kv_b_proj`, `o_proj`, `indexer.wq_b`, `indexer.wk`.
    pub const ATTN_FP8: [&str; 7] = [
        "self_attn.q_a_proj",
        "self_attn.q_b_proj",
        "self_attn.kv_a_proj_with_mqa",
        "self_attn.kv_b_proj",
        "self_attn.o_proj",
        "self_attn.indexer.wq_b",
        "self_attn.indexer.wk",
    ];
}

/// Deterministic per-tensor RNG: the stream depends only on the seed and the name, so
/// tensors can be generated in any order or in parallel.
fn rng_for(seed: u64, name: &str) -> ChaCha8Rng {
    // FNV-1a of the name, mixed with the seed.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    ChaCha8Rng::seed_from_u64(seed ^ h.rotate_left(17))
}

fn uniform(rng: &mut ChaCha8Rng, n: usize, center: f32, half_width: f32) -> Vec<f32> {
    (0..n)
        .map(|_| center + rng.random_range(-half_width..half_width))
        .collect()
}

/// What to generate for one tensor.
#[derive(Clone, Debug)]
enum Spec {
    /// FP8 linear `[out, in]`, values of standard deviation `in^-0.5`.
    Fp8(usize, usize),
    /// bf16 matrix `[out, in]` with the given standard deviation.
    Bf16Mat(usize, usize, f32),
    /// bf16 vector around a center.
    Bf16Vec(usize, f32, f32),
    /// f32 vector around a center.
    F32Vec(usize, f32, f32),
}

/// Every tensor the model reads, with its shape (the list the loader checks too).
fn specs(cfg: &Config) -> Vec<(String, Spec)> {
    let h = cfg.hidden_size;
    let nh = cfg.num_attention_heads;
    let mut v: Vec<(String, Spec)> = vec![
        (names::EMBED.into(), Spec::Bf16Mat(cfg.vocab_size, h, 1.0)),
        (names::FINAL_NORM.into(), Spec::Bf16Vec(h, 1.0, 0.1)),
        (
            names::LM_HEAD.into(),
            Spec::Bf16Mat(cfg.vocab_size, h, (h as f32).powf(-0.5)),
        ),
    ];
    let mlp = |v: &mut Vec<(String, Spec)>, prefix: String, inter: usize| {
        v.push((format!("{prefix}.gate_proj"), Spec::Fp8(inter, h)));
        v.push((format!("{prefix}.up_proj"), Spec::Fp8(inter, h)));
        v.push((format!("{prefix}.down_proj"), Spec::Fp8(h, inter)));
    };
    for i in 0..cfg.num_hidden_layers {
        let l = |s: &str| names::layer(i, s);
        v.push((l("input_layernorm.weight"), Spec::Bf16Vec(h, 1.0, 0.1)));
        v.push((
            l("post_attention_layernorm.weight"),
            Spec::Bf16Vec(h, 1.0, 0.1),
        ));
        v.push((l("self_attn.q_a_proj"), Spec::Fp8(cfg.q_lora_rank, h)));
        v.push((
            l("self_attn.q_a_layernorm.weight"),
            Spec::Bf16Vec(cfg.q_lora_rank, 1.0, 0.1),
        ));
        v.push((
            l("self_attn.q_b_proj"),
            Spec::Fp8(nh * cfg.qk_head_dim(), cfg.q_lora_rank),
        ));
        v.push((
            l("self_attn.kv_a_proj_with_mqa"),
            Spec::Fp8(cfg.kv_lora_rank + cfg.qk_rope_head_dim, h),
        ));
        v.push((
            l("self_attn.kv_a_layernorm.weight"),
            Spec::Bf16Vec(cfg.kv_lora_rank, 1.0, 0.1),
        ));
        v.push((
            l("self_attn.kv_b_proj"),
            Spec::Fp8(
                nh * (cfg.qk_nope_head_dim + cfg.v_head_dim),
                cfg.kv_lora_rank,
            ),
        ));
        v.push((l("self_attn.o_proj"), Spec::Fp8(h, nh * cfg.v_head_dim)));
        v.push((
            l("self_attn.indexer.wq_b"),
            Spec::Fp8(cfg.index_n_heads * cfg.index_head_dim, cfg.q_lora_rank),
        ));
        v.push((l("self_attn.indexer.wk"), Spec::Fp8(cfg.index_head_dim, h)));
        v.push((
            l("self_attn.indexer.k_norm.weight"),
            Spec::Bf16Vec(cfg.index_head_dim, 1.0, 0.1),
        ));
        v.push((
            l("self_attn.indexer.k_norm.bias"),
            Spec::Bf16Vec(cfg.index_head_dim, 0.0, 0.1),
        ));
        v.push((
            l("self_attn.indexer.weights_proj.weight"),
            Spec::Bf16Mat(cfg.index_n_heads, h, (h as f32).powf(-0.5)),
        ));
        if cfg.is_moe_layer(i) {
            let e = cfg.n_routed_experts;
            v.push((
                l("mlp.gate.weight"),
                Spec::Bf16Mat(e, h, (h as f32).powf(-0.5)),
            ));
            v.push((
                l("mlp.gate.e_score_correction_bias"),
                Spec::F32Vec(e, 0.0, 0.05),
            ));
            for j in 0..e {
                mlp(
                    &mut v,
                    l(&format!("mlp.experts.{j}")),
                    cfg.moe_intermediate_size,
                );
            }
            if cfg.n_shared_experts > 0 {
                mlp(
                    &mut v,
                    l("mlp.shared_experts"),
                    cfg.moe_intermediate_size * cfg.n_shared_experts,
                );
            }
        } else {
            mlp(&mut v, l("mlp"), cfg.intermediate_size);
        }
    }
    v
}

/// Generates the checkpoint tensors of seeded random weights for `cfg`: FP8 linears
/// uniform with standard deviation `in^-0.5` quantized in 128x128 blocks (scales near
/// `1e-4`, as in the real checkpoint), norm weights `1 +- 0.1`, embeddings of unit
/// variance, gate bias `+- 0.05`. The same seed always gives the same tensors.
pub fn seeded(cfg: &Config, seed: u64) -> Tensors {
    let sqrt3 = 3f32.sqrt();
    specs(cfg)
        .into_par_iter()
        .flat_map_iter(|(name, spec)| {
            let mut rng = rng_for(seed, &name);
            let out: Vec<(String, Tensor)> = match spec {
                Spec::Fp8(o, i) => {
                    let w = uniform(&mut rng, o * i, 0.0, sqrt3 / (i as f32).sqrt());
                    let q = Fp8Weight::quantize(o, i, &w);
                    vec![
                        (
                            format!("{name}.weight"),
                            Tensor::F8E4M3 {
                                shape: vec![o, i],
                                data: q.codes,
                            },
                        ),
                        (
                            format!("{name}.weight_scale_inv"),
                            Tensor::F32 {
                                shape: vec![o.div_ceil(BLOCK), i.div_ceil(BLOCK)],
                                data: q.scale_inv,
                            },
                        ),
                    ]
                }
                Spec::Bf16Mat(o, i, std) => {
                    let w = uniform(&mut rng, o * i, 0.0, std * sqrt3);
                    vec![(
                        name,
                        Tensor::Bf16 {
                            shape: vec![o, i],
                            data: w.iter().map(|&x| bf16::from_f32(x)).collect(),
                        },
                    )]
                }
                Spec::Bf16Vec(n, c, hw) => {
                    let w = uniform(&mut rng, n, c, hw);
                    vec![(
                        name,
                        Tensor::Bf16 {
                            shape: vec![n],
                            data: w.iter().map(|&x| bf16::from_f32(x)).collect(),
                        },
                    )]
                }
                Spec::F32Vec(n, c, hw) => vec![(
                    name,
                    Tensor::F32 {
                        shape: vec![n],
                        data: uniform(&mut rng, n, c, hw),
                    },
                )],
            };
            out
        })
        .collect()
}

/// Looks up a tensor and checks its shape.
pub fn get<'a>(t: &'a Tensors, name: &str, shape: &[usize]) -> Result<&'a Tensor, ModelError> {
    let x = t
        .get(name)
        .ok_or_else(|| ModelError::MissingTensor(name.to_string()))?;
    if x.shape() != shape {
        return Err(ModelError::Shape {
            name: name.to_string(),
            expected: shape.to_vec(),
            got: x.shape().to_vec(),
        });
    }
    Ok(x)
}

/// A bf16 or f32 tensor of the given shape, as f32.
pub fn get_f32(t: &Tensors, name: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError> {
    match get(t, name, shape)? {
        Tensor::F8E4M3 { .. } => Err(ModelError::Dtype {
            name: name.to_string(),
            expected: "BF16 or F32",
            got: "F8_E4M3".into(),
        }),
        x => Ok(x.to_f32()),
    }
}

/// The FP8 linear `{prefix}.weight` (+ `weight_scale_inv`) `[out, in]`. A BF16 or F32
/// weight without scales (a dequantized checkpoint) is quantized here with the 128x128
/// block rule.
pub fn get_fp8(t: &Tensors, prefix: &str, out: usize, inp: usize) -> Result<Fp8Weight, ModelError> {
    let wname = format!("{prefix}.weight");
    match get(t, &wname, &[out, inp])? {
        Tensor::F8E4M3 { data, .. } => {
            let sname = format!("{prefix}.weight_scale_inv");
            let s = get_f32(t, &sname, &[out.div_ceil(BLOCK), inp.div_ceil(BLOCK)])?;
            Ok(Fp8Weight::new(out, inp, data.clone(), s))
        }
        x => Ok(Fp8Weight::quantize(out, inp, &x.to_f32())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_is_deterministic_and_complete() {
        let cfg = Config::tiny();
        let a = seeded(&cfg, 7);
        let b = seeded(&cfg, 7);
        assert_eq!(a, b);
        let c = seeded(&cfg, 8);
        assert_ne!(a[names::EMBED], c[names::EMBED]);
        let q = get_fp8(&a, &names::layer(0, "self_attn.q_a_proj"), 128, 256).unwrap();
        assert!(
            q.scale_inv.iter().all(|&s| s > 1e-5 && s < 1e-3),
            "{:?}",
            q.scale_inv
        );
        assert!(matches!(
            get(&a, "nope", &[1]),
            Err(ModelError::MissingTensor(_))
        ));
        assert!(matches!(
            get(&a, names::EMBED, &[1]),
            Err(ModelError::Shape { .. })
        ));
    }
}
