//! Hugging Face style checkpoints: `config.json` plus safetensors files (one
//! `model.safetensors`, or shards listed by `model.safetensors.index.json`).
//!
//! Supported dtypes: `F8_E4M3` (FP8 weights), `BF16`, `F16` and `F32` (F16 is widened to
//! f32 and stored as F32). Tensors the model does not read (for example the multi-token
//! prediction layer) are ignored by [`crate::model::Model::from_tensors`].

use crate::config::Config;
use crate::error::ModelError;
use crate::weights::{Tensor, Tensors};
use half::{bf16, f16};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::path::Path;

fn io_err(path: &Path, source: std::io::Error) -> ModelError {
    ModelError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn st_err(path: &Path, e: impl std::fmt::Display) -> ModelError {
    ModelError::Safetensors(format!("{}: {e}", path.display()))
}

/// Reads every tensor of one safetensors file into `out`.
pub fn read_safetensors(path: &Path, out: &mut Tensors) -> Result<(), ModelError> {
    let bytes = std::fs::read(path).map_err(|e| io_err(path, e))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| st_err(path, e))?;
    for (name, view) in st.iter() {
        let shape = view.shape().to_vec();
        let data = view.data();
        let t = match view.dtype() {
            Dtype::F8_E4M3 => Tensor::F8E4M3 {
                shape,
                data: data.to_vec(),
            },
            Dtype::BF16 => Tensor::Bf16 {
                shape,
                data: data
                    .chunks_exact(2)
                    .map(|b| bf16::from_le_bytes([b[0], b[1]]))
                    .collect(),
            },
            Dtype::F16 => Tensor::F32 {
                shape,
                data: data
                    .chunks_exact(2)
                    .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect(),
            },
            Dtype::F32 => Tensor::F32 {
                shape,
                data: data
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
            },
            other => {
                return Err(ModelError::Dtype {
                    name: name.to_string(),
                    expected: "F8_E4M3, BF16, F16 or F32",
                    got: format!("{other:?}"),
                })
            }
        };
        out.insert(name.to_string(), t);
    }
    Ok(())
}

/// Writes tensors to one safetensors file (little-endian, names sorted).
pub fn write_safetensors(tensors: &Tensors, path: &Path) -> Result<(), ModelError> {
    let bytes: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, t)| {
            let (dtype, data) = match t {
                Tensor::F8E4M3 { data, .. } => (Dtype::F8_E4M3, data.clone()),
                Tensor::Bf16 { data, .. } => (
                    Dtype::BF16,
                    data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                ),
                Tensor::F32 { data, .. } => (
                    Dtype::F32,
                    data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                ),
            };
            (name.clone(), dtype, t.shape().to_vec(), data)
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(n, d, s, b)| TensorView::new(*d, s.clone(), b).map(|v| (n.clone(), v)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| st_err(path, e))?;
    safetensors::serialize_to_file(views, None, path).map_err(|e| st_err(path, e))
}

/// Loads a checkpoint directory: `config.json`, then `model.safetensors.index.json`
/// (its `weight_map` names the shards) or else every `*.safetensors` file in the
/// directory.
pub fn load_dir(dir: &Path) -> Result<(Config, Tensors), ModelError> {
    let cfg = Config::from_file(dir.join("config.json"))?;
    let mut tensors = Tensors::new();
    let index = dir.join("model.safetensors.index.json");
    let mut files: Vec<std::path::PathBuf> = Vec::new();
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| io_err(&index, e))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| st_err(&index, e))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| st_err(&index, "no `weight_map` object"))?;
        for f in map.values() {
            let f = f
                .as_str()
                .ok_or_else(|| st_err(&index, "a weight_map value is not a string"))?;
            let p = dir.join(f);
            if !files.contains(&p) {
                files.push(p);
            }
        }
    } else {
        let rd = std::fs::read_dir(dir).map_err(|e| io_err(dir, e))?;
        for entry in rd {
            let p = entry.map_err(|e| io_err(dir, e))?.path();
            if p.extension().is_some_and(|e| e == "safetensors") {
                files.push(p);
            }
        }
        files.sort();
    }
    if files.is_empty() {
        return Err(ModelError::Safetensors(format!(
            "{}: no safetensors files",
            dir.display()
        )));
    }
    for f in files {
        read_safetensors(&f, &mut tensors)?;
    }
    Ok((cfg, tensors))
}

/// Writes a checkpoint directory: `config.json` and the tensors split into `shards`
/// files (`model-0000i-of-0000n.safetensors`) with a `model.safetensors.index.json`, or a
/// single `model.safetensors` when `shards <= 1`.
pub fn save_dir(
    dir: &Path,
    cfg: &Config,
    tensors: &Tensors,
    shards: usize,
) -> Result<(), ModelError> {
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    let cp = dir.join("config.json");
    std::fs::write(&cp, cfg.to_json()).map_err(|e| io_err(&cp, e))?;
    if shards <= 1 {
        return write_safetensors(tensors, &dir.join("model.safetensors"));
    }
    let names: Vec<&String> = tensors.keys().collect();
    let per = names.len().div_ceil(shards);
    let mut map = serde_json::Map::new();
    for (i, chunk) in names.chunks(per.max(1)).enumerate() {
        let file = format!("model-{:05}-of-{:05}.safetensors", i + 1, shards);
        let part: Tensors = chunk
            .iter()
            .map(|&n| (n.clone(), tensors[n].clone()))
            .collect();
        write_safetensors(&part, &dir.join(&file))?;
        for n in chunk {
            map.insert((*n).clone(), serde_json::Value::from(file.clone()));
        }
    }
    let idx = serde_json::json!({ "metadata": {}, "weight_map": map });
    let ip = dir.join("model.safetensors.index.json");
    std::fs::write(&ip, idx.to_string()).map_err(|e| io_err(&ip, e))
}
