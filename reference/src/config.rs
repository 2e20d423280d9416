//! Model configuration: parsing of a Hugging Face `config.json` of the DeepSeek-V3.2
//! family, validation, and the two presets.
//!
//! * [`Config::deepseek_v32_671b`]: the real model (parsed from its `config.json` text,
//!   never run here).
//! * [`Config::mini`]: runnable on a CPU. It keeps every per-head dimension of the real
//!   model, so its caches and kernel inputs have exactly the real layouts (KV latent 512,
//!   rope 64, nope 128, v 128, indexer 64 heads x 128, page 64) and shrinks everything
//!   else: hidden 512, 4 layers with the first dense, 16 heads, q latent 256, 32 routed
//!   experts in 8 groups keeping 4, 4 active, 1 shared, expert width 256, dense width
//!   1024, vocab 2048, and an indexer top-k of 256 so that sparsity shows from 257 tokens
//!   of context on. FP8 activation scales are plain f32 (`amax / 448`) in the small
//!   presets; the real config asks for UE8M0 (power-of-two) scales.
//! * [`Config::tiny`]: the same family shrunk further (2 heads, 4 indexer heads, 2
//!   layers) for fast tests; the MLA and indexer per-head dims are still the real ones.

use crate::error::ConfigError;
use crate::rope::{self, YarnParams};
use serde_json::{Map, Value};

/// A validated DeepSeek-V3.2-family configuration (Hugging Face field names).
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// `vocab_size`.
    pub vocab_size: usize,
    /// `hidden_size`.
    pub hidden_size: usize,
    /// `intermediate_size`: width of the dense MLP of the first layers.
    pub intermediate_size: usize,
    /// `moe_intermediate_size`: width of each expert (and of each shared expert).
    pub moe_intermediate_size: usize,
    /// `num_hidden_layers`.
    pub num_hidden_layers: usize,
    /// `num_attention_heads`.
    pub num_attention_heads: usize,
    /// `q_lora_rank`: width of the query latent.
    pub q_lora_rank: usize,
    /// `kv_lora_rank`: width of the KV latent (512; the cache layouts need it).
    pub kv_lora_rank: usize,
    /// `qk_nope_head_dim`.
    pub qk_nope_head_dim: usize,
    /// `qk_rope_head_dim` (64; the cache layouts need it).
    pub qk_rope_head_dim: usize,
    /// `v_head_dim`.
    pub v_head_dim: usize,
    /// `n_routed_experts`.
    pub n_routed_experts: usize,
    /// `n_shared_experts`.
    pub n_shared_experts: usize,
    /// `num_experts_per_tok`.
    pub num_experts_per_tok: usize,
    /// `first_k_dense_replace`: the first layers with a dense MLP instead of MoE.
    pub first_k_dense_replace: usize,
    /// `n_group`: expert groups.
    pub n_group: usize,
    /// `topk_group`: groups kept per token.
    pub topk_group: usize,
    /// `routed_scaling_factor`.
    pub routed_scaling_factor: f32,
    /// `norm_topk_prob`: renormalise the chosen experts' scores to sum 1.
    pub norm_topk_prob: bool,
    /// `index_topk`: keys selected per query by the lightning indexer.
    pub index_topk: usize,
    /// `index_n_heads`.
    pub index_n_heads: usize,
    /// `index_head_dim` (128; the indexer cache layout needs it).
    pub index_head_dim: usize,
    /// `rope_theta` and `rope_scaling` (YaRN; plain RoPE when `rope_scaling` is null).
    pub rope: YarnParams,
    /// `rms_norm_eps` (also the indexer LayerNorm eps).
    pub rms_norm_eps: f32,
    /// `max_position_embeddings`.
    pub max_position_embeddings: usize,
    /// `quantization_config.scale_fmt == "ue8m0"`: FP8 activation scales of the linear
    /// layers rounded up to powers of two (false when the block is absent).
    pub act_scale_ue8m0: bool,
}

const REAL_CONFIG_JSON: &str = r#"{
  "architectures": ["DeepseekV32ForCausalLM"],
  "model_type": "deepseek_v32",
  "vocab_size": 129280,
  "hidden_size": 7168,
  "intermediate_size": 18432,
  "moe_intermediate_size": 2048,
  "num_hidden_layers": 61,
  "num_nextn_predict_layers": 1,
  "num_attention_heads": 128,
  "num_key_value_heads": 128,
  "n_shared_experts": 1,
  "n_routed_experts": 256,
  "ep_size": 1,
  "routed_scaling_factor": 2.5,
  "kv_lora_rank": 512,
  "q_lora_rank": 1536,
  "qk_rope_head_dim": 64,
  "v_head_dim": 128,
  "qk_nope_head_dim": 128,
  "topk_method": "noaux_tc",
  "n_group": 8,
  "topk_group": 4,
  "num_experts_per_tok": 8,
  "moe_layer_freq": 1,
  "first_k_dense_replace": 3,
  "norm_topk_prob": true,
  "scoring_func": "sigmoid",
  "hidden_act": "silu",
  "max_position_embeddings": 163840,
  "initializer_range": 0.02,
  "rms_norm_eps": 1e-06,
  "use_cache": true,
  "rope_theta": 10000,
  "rope_scaling": {
    "beta_fast": 32,
    "beta_slow": 1,
    "factor": 40,
    "mscale": 1.0,
    "mscale_all_dim": 1.0,
    "original_max_position_embeddings": 4096,
    "type": "yarn"
  },
  "index_topk": 2048,
  "index_n_heads": 64,
  "index_head_dim": 128,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "quantization_config": {
    "activation_scheme": "dynamic",
    "fmt": "e4m3",
    "quant_method": "fp8",
    "scale_fmt": "ue8m0",
    "weight_block_size": [128, 128]
  }
}"#;

fn field<'a>(o: &'a Map<String, Value>, name: &str) -> Result<&'a Value, ConfigError> {
    match o.get(name) {
        None | Some(Value::Null) => Err(ConfigError::Missing(name.to_string())),
        Some(v) => Ok(v),
    }
}

fn usize_field(o: &Map<String, Value>, name: &str) -> Result<usize, ConfigError> {
    let v = field(o, name)?;
    // Accept integral floats ("4096.0") since some exporters write them.
    let n = v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| *f >= 0.0 && f.fract() == 0.0)
            .map(|f| f as u64)
    });
    n.map(|n| n as usize).ok_or_else(|| ConfigError::WrongType {
        field: name.to_string(),
        expected: "a non-negative integer",
        got: v.to_string(),
    })
}

fn f64_field(o: &Map<String, Value>, name: &str) -> Result<f64, ConfigError> {
    let v = field(o, name)?;
    v.as_f64().ok_or_else(|| ConfigError::WrongType {
        field: name.to_string(),
        expected: "a number",
        got: v.to_string(),
    })
}

fn bool_field(o: &Map<String, Value>, name: &str) -> Result<bool, ConfigError> {
    let v = field(o, name)?;
    v.as_bool().ok_or_else(|| ConfigError::WrongType {
        field: name.to_string(),
        expected: "a boolean",
        got: v.to_string(),
    })
}

fn invalid(field: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// The RoPE of a config in either form: `rope_theta` with a `rope_scaling` block (or
/// null: plain RoPE), as DeepSeek publishes it, or the newer Hugging Face
/// `rope_parameters` block (`rope_type` `yarn` or `default`, `rope_theta` inside it or at
/// the top level), which `transformers` 5 writes when it saves a config. When both are
/// present, `rope_parameters` is read.
fn parse_rope(o: &Map<String, Value>) -> Result<YarnParams, ConfigError> {
    let (block_name, block) = match o.get("rope_parameters") {
        None | Some(Value::Null) => ("rope_scaling", o.get("rope_scaling")),
        Some(p) => ("rope_parameters", Some(p)),
    };
    let sub = |name: &str| format!("{block_name}.{name}");
    let rs = match block {
        None | Some(Value::Null) => return Ok(YarnParams::plain(f64_field(o, "rope_theta")?)),
        Some(Value::Object(rs)) => rs,
        Some(other) => {
            return Err(ConfigError::WrongType {
                field: block_name.into(),
                expected: "an object or null",
                got: other.to_string(),
            })
        }
    };
    let num = |name: &str| -> Result<f64, ConfigError> {
        f64_field(rs, name).map_err(|e| match e {
            ConfigError::Missing(_) => ConfigError::Missing(sub(name)),
            ConfigError::WrongType { expected, got, .. } => ConfigError::WrongType {
                field: sub(name),
                expected,
                got,
            },
            e => e,
        })
    };
    let theta = match rs.get("rope_theta") {
        Some(v) if !v.is_null() => num("rope_theta")?,
        _ => f64_field(o, "rope_theta")?,
    };
    let kind = rs
        .get("type")
        .or_else(|| rs.get("rope_type"))
        .and_then(|t| t.as_str());
    match kind {
        Some("yarn") => {}
        Some("default") if block_name == "rope_parameters" => return Ok(YarnParams::plain(theta)),
        _ => {
            return Err(ConfigError::Unsupported(format!(
                "{block_name} type {kind:?} (only yarn)"
            )))
        }
    }
    let opt = |name: &str, d: f64| -> Result<f64, ConfigError> {
        match rs.get(name) {
            None | Some(Value::Null) => Ok(d),
            Some(_) => num(name),
        }
    };
    let orig = num("original_max_position_embeddings")?;
    if orig < 1.0 || orig.fract() != 0.0 {
        return Err(invalid(
            &sub("original_max_position_embeddings"),
            "must be a positive integer",
        ));
    }
    Ok(YarnParams {
        theta,
        factor: num("factor")?,
        original_max_position: orig as usize,
        beta_fast: opt("beta_fast", 32.0)?,
        beta_slow: opt("beta_slow", 1.0)?,
        mscale: opt("mscale", 1.0)?,
        mscale_all_dim: opt("mscale_all_dim", 0.0)?,
    })
}

impl Config {
    /// Parses and validates the text of a Hugging Face `config.json`. Unknown fields are
    /// ignored; `scoring_func` must be `sigmoid` and `rope_scaling.type` `yarn` (or the
    /// block absent for plain RoPE); the newer `rope_parameters` form is accepted too
    /// (see `parse_rope`).
    pub fn from_json_str(text: &str) -> Result<Self, ConfigError> {
        let v: Value = serde_json::from_str(text).map_err(|e| ConfigError::Json(e.to_string()))?;
        let o = v
            .as_object()
            .ok_or_else(|| ConfigError::Json("top level is not an object".into()))?;
        let scoring = field(o, "scoring_func")?;
        match scoring.as_str() {
            Some("sigmoid") => {}
            Some(other) => {
                return Err(ConfigError::Unsupported(format!(
                    "scoring_func `{other}` (DeepSeek-V3.2 uses sigmoid)"
                )))
            }
            None => {
                return Err(ConfigError::WrongType {
                    field: "scoring_func".into(),
                    expected: "a string",
                    got: scoring.to_string(),
                })
            }
        }
        let rope = parse_rope(o)?;
        let cfg = Config {
            vocab_size: usize_field(o, "vocab_size")?,
            hidden_size: usize_field(o, "hidden_size")?,
            intermediate_size: usize_field(o, "intermediate_size")?,
            moe_intermediate_size: usize_field(o, "moe_intermediate_size")?,
            num_hidden_layers: usize_field(o, "num_hidden_layers")?,
            num_attention_heads: usize_field(o, "num_attention_heads")?,
            q_lora_rank: usize_field(o, "q_lora_rank")?,
            kv_lora_rank: usize_field(o, "kv_lora_rank")?,
            qk_nope_head_dim: usize_field(o, "qk_nope_head_dim")?,
            qk_rope_head_dim: usize_field(o, "qk_rope_head_dim")?,
            v_head_dim: usize_field(o, "v_head_dim")?,
            n_routed_experts: usize_field(o, "n_routed_experts")?,
            n_shared_experts: usize_field(o, "n_shared_experts")?,
            num_experts_per_tok: usize_field(o, "num_experts_per_tok")?,
            first_k_dense_replace: usize_field(o, "first_k_dense_replace")?,
            n_group: usize_field(o, "n_group")?,
            topk_group: usize_field(o, "topk_group")?,
            routed_scaling_factor: f64_field(o, "routed_scaling_factor")? as f32,
            norm_topk_prob: bool_field(o, "norm_topk_prob")?,
            index_topk: usize_field(o, "index_topk")?,
            index_n_heads: usize_field(o, "index_n_heads")?,
            index_head_dim: usize_field(o, "index_head_dim")?,
            rope,
            rms_norm_eps: f64_field(o, "rms_norm_eps")? as f32,
            max_position_embeddings: usize_field(o, "max_position_embeddings")?,
            act_scale_ue8m0: o
                .get("quantization_config")
                .and_then(|q| q.get("scale_fmt"))
                .and_then(|f| f.as_str())
                == Some("ue8m0"),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads and parses a `config.json` file.
    pub fn from_file(path: impl AsRef<std::path::Path>) -> Result<Self, ConfigError> {
        let p = path.as_ref();
        let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Io {
            path: p.display().to_string(),
            source,
        })?;
        Self::from_json_str(&text)
    }

    /// Checks ranges and cross-field consistency.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("moe_intermediate_size", self.moe_intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("q_lora_rank", self.q_lora_rank),
            ("qk_nope_head_dim", self.qk_nope_head_dim),
            ("v_head_dim", self.v_head_dim),
            ("n_group", self.n_group),
            ("topk_group", self.topk_group),
            ("num_experts_per_tok", self.num_experts_per_tok),
            ("index_topk", self.index_topk),
            ("index_n_heads", self.index_n_heads),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(invalid(name, "must be positive"));
            }
        }
        let fixed = [
            (
                "kv_lora_rank",
                self.kv_lora_rank,
                crate::cache::KV_LORA_RANK,
            ),
            (
                "qk_rope_head_dim",
                self.qk_rope_head_dim,
                crate::cache::ROPE_DIM,
            ),
            (
                "index_head_dim",
                self.index_head_dim,
                crate::cache::INDEXER_DIM,
            ),
        ];
        for (name, v, want) in fixed {
            if v != want {
                return Err(ConfigError::Unsupported(format!(
                    "{name} = {v}: the cache layouts of this crate need {want}"
                )));
            }
        }
        if self.first_k_dense_replace > self.num_hidden_layers {
            return Err(invalid(
                "first_k_dense_replace",
                format!(
                    "{} exceeds num_hidden_layers {}",
                    self.first_k_dense_replace, self.num_hidden_layers
                ),
            ));
        }
        if self.first_k_dense_replace < self.num_hidden_layers {
            if self.n_routed_experts == 0 {
                return Err(invalid(
                    "n_routed_experts",
                    "MoE layers need at least one expert",
                ));
            }
            if !self.n_routed_experts.is_multiple_of(self.n_group) {
                return Err(invalid(
                    "n_group",
                    format!(
                        "{} experts do not split into {} groups",
                        self.n_routed_experts, self.n_group
                    ),
                ));
            }
            let per_group = self.n_routed_experts / self.n_group;
            if per_group < 2 {
                return Err(invalid(
                    "n_group",
                    "the group score needs at least 2 experts per group",
                ));
            }
            if self.topk_group > self.n_group {
                return Err(invalid(
                    "topk_group",
                    format!("{} exceeds n_group {}", self.topk_group, self.n_group),
                ));
            }
            if self.num_experts_per_tok > self.topk_group * per_group {
                return Err(invalid(
                    "num_experts_per_tok",
                    format!(
                        "{} exceeds the {} experts of the {} kept groups",
                        self.num_experts_per_tok,
                        self.topk_group * per_group,
                        self.topk_group
                    ),
                ));
            }
        }
        if !(self.rms_norm_eps > 0.0 && self.rms_norm_eps.is_finite()) {
            return Err(invalid("rms_norm_eps", "must be a positive number"));
        }
        if !(self.routed_scaling_factor.is_finite() && self.routed_scaling_factor > 0.0) {
            return Err(invalid(
                "routed_scaling_factor",
                "must be a positive number",
            ));
        }
        if !(self.rope.theta > 1.0 && self.rope.theta.is_finite()) {
            return Err(invalid("rope_theta", "must be a finite number above 1"));
        }
        if !(self.rope.factor > 0.0 && self.rope.factor.is_finite()) {
            return Err(invalid("rope_scaling.factor", "must be positive"));
        }
        if !(self.rope.beta_fast > 0.0 && self.rope.beta_slow > 0.0) {
            return Err(invalid(
                "rope_scaling.beta_fast",
                "beta_fast and beta_slow must be positive",
            ));
        }
        Ok(())
    }

    /// The real DeepSeek-V3.2 (671B) configuration, parsed from its `config.json` text.
    pub fn deepseek_v32_671b() -> Self {
        Self::from_json_str(REAL_CONFIG_JSON).expect("the built-in 671B config is valid")
    }

    /// The text of the real model's `config.json` (as embedded in this crate).
    pub fn deepseek_v32_671b_json() -> &'static str {
        REAL_CONFIG_JSON
    }

    /// The runnable CPU preset (module docs).
    pub fn mini() -> Self {
        Config {
            vocab_size: 2048,
            hidden_size: 512,
            intermediate_size: 1024,
            moe_intermediate_size: 256,
            num_hidden_layers: 4,
            num_attention_heads: 16,
            q_lora_rank: 256,
            kv_lora_rank: 512,
            qk_nope_head_dim: 128,
            qk_rope_head_dim: 64,
            v_head_dim: 128,
            n_routed_experts: 32,
            n_shared_experts: 1,
            num_experts_per_tok: 4,
            first_k_dense_replace: 1,
            n_group: 8,
            topk_group: 4,
            routed_scaling_factor: 2.5,
            norm_topk_prob: true,
            index_topk: 256,
            index_n_heads: 64,
            index_head_dim: 128,
            rope: YarnParams::deepseek_v32(),
            rms_norm_eps: 1e-6,
            max_position_embeddings: 16384,
            act_scale_ue8m0: false,
        }
    }

    /// The test-size preset (module docs): hidden 256, 2 layers (first dense), 2 heads,
    /// q latent 128, 8 experts in 4 groups keeping 2, 2 active, 1 shared, expert width
    /// 128, dense width 256, vocab 256, 4 indexer heads, indexer top-k 16.
    pub fn tiny() -> Self {
        Config {
            vocab_size: 256,
            hidden_size: 256,
            intermediate_size: 256,
            moe_intermediate_size: 128,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            q_lora_rank: 128,
            n_routed_experts: 8,
            num_experts_per_tok: 2,
            n_group: 4,
            topk_group: 2,
            index_topk: 16,
            index_n_heads: 4,
            max_position_embeddings: 1024,
            ..Self::mini()
        }
    }

    /// `qk_nope_head_dim + qk_rope_head_dim` (192).
    pub fn qk_head_dim(&self) -> usize {
        self.qk_nope_head_dim + self.qk_rope_head_dim
    }

    /// The MLA softmax scale `qk_head_dim^-0.5 * mscale^2` (0.135234 for the real model).
    pub fn softmax_scale(&self) -> f32 {
        rope::mla_softmax_scale(self.qk_head_dim(), &self.rope)
    }

    /// Whether layer `i` uses MoE (else the dense MLP).
    pub fn is_moe_layer(&self, i: usize) -> bool {
        i >= self.first_k_dense_replace
    }

    /// The configuration as Hugging Face `config.json` text.
    pub fn to_json(&self) -> String {
        let v = serde_json::json!({
            "model_type": "deepseek_v32",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "moe_intermediate_size": self.moe_intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "q_lora_rank": self.q_lora_rank,
            "kv_lora_rank": self.kv_lora_rank,
            "qk_nope_head_dim": self.qk_nope_head_dim,
            "qk_rope_head_dim": self.qk_rope_head_dim,
            "v_head_dim": self.v_head_dim,
            "n_routed_experts": self.n_routed_experts,
            "n_shared_experts": self.n_shared_experts,
            "num_experts_per_tok": self.num_experts_per_tok,
            "first_k_dense_replace": self.first_k_dense_replace,
            "n_group": self.n_group,
            "topk_group": self.topk_group,
            "routed_scaling_factor": self.routed_scaling_factor,
            "scoring_func": "sigmoid",
            "norm_topk_prob": self.norm_topk_prob,
            "index_topk": self.index_topk,
            "index_n_heads": self.index_n_heads,
            "index_head_dim": self.index_head_dim,
            "rope_theta": self.rope.theta,
            "rope_scaling": {
                "type": "yarn",
                "factor": self.rope.factor,
                "original_max_position_embeddings": self.rope.original_max_position,
                "beta_fast": self.rope.beta_fast,
                "beta_slow": self.rope.beta_slow,
                "mscale": self.rope.mscale,
                "mscale_all_dim": self.rope.mscale_all_dim,
            },
            "rms_norm_eps": self.rms_norm_eps,
            "max_position_embeddings": self.max_position_embeddings,
            "quantization_config": {
                "activation_scheme": "dynamic",
                "fmt": "e4m3",
                "quant_method": "fp8",
                "scale_fmt": if self.act_scale_ue8m0 { "ue8m0" } else { "float" },
                "weight_block_size": [128, 128],
            },
        });
        serde_json::to_string_pretty(&v).expect("JSON serialization of numbers cannot fail")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_preset() {
        let c = Config::deepseek_v32_671b();
        assert_eq!(c.hidden_size, 7168);
        assert_eq!(c.num_hidden_layers, 61);
        assert_eq!(c.index_topk, 2048);
        assert_eq!(c.rope, YarnParams::deepseek_v32());
        assert!((c.softmax_scale() - 0.135234).abs() < 1e-6);
        assert!(!c.is_moe_layer(2) && c.is_moe_layer(3));
        assert!(c.act_scale_ue8m0);
    }

    #[test]
    fn presets_round_trip_through_json() {
        for c in [Config::mini(), Config::tiny(), Config::deepseek_v32_671b()] {
            c.validate().unwrap();
            let back = Config::from_json_str(&c.to_json()).unwrap();
            assert_eq!(back, c);
        }
    }

    fn edit(f: impl FnOnce(&mut Map<String, Value>)) -> Result<Config, ConfigError> {
        let mut v: Value = serde_json::from_str(REAL_CONFIG_JSON).unwrap();
        f(v.as_object_mut().unwrap());
        Config::from_json_str(&v.to_string())
    }

    #[test]
    fn clear_errors() {
        let e = edit(|o| {
            o.remove("hidden_size");
        })
        .unwrap_err();
        assert_eq!(e.to_string(), "config field `hidden_size` is missing");
        let e = edit(|o| {
            o.insert("n_group".into(), Value::from(7));
        })
        .unwrap_err();
        assert!(
            matches!(e, ConfigError::Invalid { ref field, .. } if field == "n_group"),
            "{e}"
        );
        let e = edit(|o| {
            o.insert("kv_lora_rank".into(), Value::from(256));
        })
        .unwrap_err();
        assert!(matches!(e, ConfigError::Unsupported(_)), "{e}");
        let e = edit(|o| {
            o.insert("num_hidden_layers".into(), Value::from("61"));
        })
        .unwrap_err();
        assert!(matches!(e, ConfigError::WrongType { .. }), "{e}");
        let e = edit(|o| {
            o["rope_scaling"].as_object_mut().unwrap().remove("factor");
        })
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "config field `rope_scaling.factor` is missing"
        );
        let e = edit(|o| {
            o.insert("scoring_func".into(), Value::from("softmax"));
        })
        .unwrap_err();
        assert!(matches!(e, ConfigError::Unsupported(_)));
        let e = edit(|o| {
            o.insert("num_experts_per_tok".into(), Value::from(200));
        })
        .unwrap_err();
        assert!(matches!(e, ConfigError::Invalid { .. }));
        assert!(matches!(
            Config::from_json_str("[1]"),
            Err(ConfigError::Json(_))
        ));
        assert!(matches!(
            Config::from_json_str("{"),
            Err(ConfigError::Json(_))
        ));
        assert!(matches!(
            Config::from_file("/nonexistent/config.json"),
            Err(ConfigError::Io { .. })
        ));
        let e = edit(|o| {
            o.insert("rope_scaling".into(), Value::Null);
        })
        .unwrap();
        assert_eq!(e.rope.factor, 1.0);
    }
}
