//! The config loader against the published DeepSeek-V3.2 `config.json`: the fixture has
//! exactly the published field set (top level and nested blocks), written out from the
//! file on the model's Hugging Face page; and the same config in the newer
//! `rope_parameters` form that `transformers` 5 writes when it saves a config.
use dsa_reference::Config;
use serde_json::{Map, Value};

const PUBLISHED: &str = include_str!("data/deepseek_v32_config.json");

fn object(text: &str) -> Map<String, Value> {
    match serde_json::from_str(text).expect("valid JSON") {
        Value::Object(o) => o,
        other => panic!("not an object: {other}"),
    }
}

#[test]
fn fixture_has_the_published_field_set() {
    let o = object(PUBLISHED);
    let mut keys: Vec<&str> = o.keys().map(String::as_str).collect();
    keys.sort_unstable();
    let published = [
        "architectures",
        "attention_bias",
        "attention_dropout",
        "bos_token_id",
        "eos_token_id",
        "ep_size",
        "first_k_dense_replace",
        "hidden_act",
        "hidden_size",
        "index_head_dim",
        "index_n_heads",
        "index_topk",
        "initializer_range",
        "intermediate_size",
        "kv_lora_rank",
        "max_position_embeddings",
        "model_type",
        "moe_intermediate_size",
        "moe_layer_freq",
        "n_group",
        "n_routed_experts",
        "n_shared_experts",
        "norm_topk_prob",
        "num_attention_heads",
        "num_experts_per_tok",
        "num_hidden_layers",
        "num_key_value_heads",
        "num_nextn_predict_layers",
        "q_lora_rank",
        "qk_nope_head_dim",
        "qk_rope_head_dim",
        "quantization_config",
        "rms_norm_eps",
        "rope_scaling",
        "rope_theta",
        "routed_scaling_factor",
        "scoring_func",
        "tie_word_embeddings",
        "topk_group",
        "topk_method",
        "torch_dtype",
        "transformers_version",
        "use_cache",
        "v_head_dim",
        "vocab_size",
    ];
    assert_eq!(keys, published);
    let rs = o["rope_scaling"].as_object().unwrap();
    let mut rk: Vec<&str> = rs.keys().map(String::as_str).collect();
    rk.sort_unstable();
    assert_eq!(
        rk,
        [
            "beta_fast",
            "beta_slow",
            "factor",
            "mscale",
            "mscale_all_dim",
            "original_max_position_embeddings",
            "type"
        ]
    );
    assert_eq!(o["architectures"][0], "DeepseekV32ForCausalLM");
}

#[test]
fn published_config_parses_to_the_built_in_preset() {
    let c = Config::from_json_str(PUBLISHED).expect("the published config parses");
    assert_eq!(c, Config::deepseek_v32_671b());
    assert_eq!(
        (c.index_head_dim, c.index_n_heads, c.index_topk),
        (128, 64, 2048)
    );
    assert_eq!(c.rope.factor, 40.0);
    assert_eq!(c.rope.original_max_position, 4096);
    assert!(c.act_scale_ue8m0);
}

/// `transformers` 5 folds `rope_theta` and `rope_scaling` into `rope_parameters` (with
/// `rope_type`) when it saves a config.
#[test]
fn rope_parameters_form_parses_the_same() {
    let mut o = object(PUBLISHED);
    let Some(Value::Object(mut rp)) = o.remove("rope_scaling") else {
        panic!("fixture has rope_scaling")
    };
    let theta = o.remove("rope_theta").unwrap();
    let kind = rp.remove("type").unwrap();
    rp.insert("rope_type".into(), kind);
    rp.insert("rope_theta".into(), theta);
    o.insert("rope_parameters".into(), Value::Object(rp.clone()));
    let c = Config::from_json_str(&Value::Object(o.clone()).to_string()).unwrap();
    assert_eq!(c, Config::deepseek_v32_671b());

    // rope_theta may stay at the top level.
    let theta = rp.remove("rope_theta").unwrap();
    o.insert("rope_parameters".into(), Value::Object(rp.clone()));
    o.insert("rope_theta".into(), theta);
    assert_eq!(
        Config::from_json_str(&Value::Object(o.clone()).to_string()).unwrap(),
        Config::deepseek_v32_671b()
    );

    // `default` means plain RoPE; a missing factor is named with its block.
    let mut plain = o.clone();
    plain.insert(
        "rope_parameters".into(),
        serde_json::json!({"rope_type": "default", "rope_theta": 10000.0}),
    );
    let c = Config::from_json_str(&Value::Object(plain).to_string()).unwrap();
    assert_eq!(c.rope.factor, 1.0);
    rp.remove("factor");
    o.insert("rope_parameters".into(), Value::Object(rp));
    let e = Config::from_json_str(&Value::Object(o).to_string()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "config field `rope_parameters.factor` is missing"
    );
}
