//! The Qwen2 byte-level BPE tokenizer (`Qwen2Tokenizer` of transformers), on the `tokenizers`
//! crate (pure Rust, builds for wasm32 with its `unstable_wasm` feature).
//!
//! A tokenizer folder holds either
//!
//! - `tokenizer.json` (the fast-tokenizer file; the pipeline's `processor/` folder has one), or
//! - `vocab.json` + `merges.txt` + `tokenizer_config.json` (the official repository's
//!   `tokenizer/` folder). The tokenizer is then built the way `Qwen2Tokenizer` builds itself:
//!   NFC, the Qwen2 pre-tokenizer regex (split, isolated), byte-level mapping without prefix
//!   space, BPE without unknown token, byte-level decoder.
//!
//! In both cases the added tokens of `tokenizer_config.json`'s `added_tokens_decoder` (`id →
//! {content, special, lstrip, rstrip, single_word, normalized}`) are registered at their ids,
//! and every declared id is checked after building.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::normalizers::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use crate::error::{Error, Result};
use crate::weights::WeightSource;

/// `Qwen2Tokenizer`'s pre-tokenizer regex (`PRETOKENIZE_REGEX` in transformers'
/// `tokenization_qwen2.py`): contractions, letter runs with one leading non-letter, single
/// digits, punctuation runs, newlines, spaces.
pub const QWEN2_PRETOKENIZE_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// One entry of `added_tokens_decoder` in `tokenizer_config.json`.
#[derive(Debug, Clone, Deserialize)]
struct AddedTokenEntry {
    content: String,
    #[serde(default)]
    special: bool,
    #[serde(default)]
    lstrip: bool,
    #[serde(default)]
    rstrip: bool,
    #[serde(default)]
    single_word: bool,
    #[serde(default)]
    normalized: Option<bool>,
}

impl AddedTokenEntry {
    fn to_added(&self) -> AddedToken {
        AddedToken::from(self.content.clone(), self.special)
            .lstrip(self.lstrip)
            .rstrip(self.rstrip)
            .single_word(self.single_word)
            .normalized(self.normalized.unwrap_or(!self.special))
    }
}

/// The parts of `tokenizer_config.json` read here.
#[derive(Debug, Clone, Default, Deserialize)]
struct TokenizerConfig {
    #[serde(default)]
    added_tokens_decoder: BTreeMap<String, AddedTokenEntry>,
    #[serde(default)]
    tokenizer_class: Option<String>,
}

/// A Qwen2 tokenizer.
#[derive(Debug, Clone)]
pub struct QwenTokenizer {
    inner: Tokenizer,
    /// The folder it was read from (for messages).
    origin: String,
}

fn tok_err(file: &str, reason: impl std::fmt::Display) -> Error {
    Error::Tokenizer {
        file: file.to_owned(),
        reason: reason.to_string(),
    }
}

impl QwenTokenizer {
    /// Loads the tokenizer of `folder` (e.g. `"tokenizer"`) from `source`: `tokenizer.json` if
    /// present, else `vocab.json` + `merges.txt`; `tokenizer_config.json` (optional next to a
    /// `tokenizer.json`, required otherwise) supplies the added tokens.
    pub async fn load<S: WeightSource>(source: &S, folder: &str) -> Result<Self> {
        let path = |name: &str| {
            if folder.is_empty() {
                name.to_owned()
            } else {
                format!("{folder}/{name}")
            }
        };
        let config_file = path("tokenizer_config.json");
        let config = if source.exists(&config_file).await? {
            Some(source.read_all(&config_file).await?)
        } else {
            None
        };
        let json_file = path("tokenizer.json");
        if source.exists(&json_file).await? {
            let json = source.read_all(&json_file).await?;
            return Self::from_tokenizer_json(&json, config.as_deref(), &json_file);
        }
        let (vocab_file, merges_file) = (path("vocab.json"), path("merges.txt"));
        for file in [&vocab_file, &merges_file, &config_file] {
            if !source.exists(file).await? {
                return Err(tok_err(
                    file,
                    format!(
                        "missing: {folder:?} has no tokenizer.json, so it needs vocab.json, merges.txt and tokenizer_config.json"
                    ),
                ));
            }
        }
        let vocab = source.read_all(&vocab_file).await?;
        let merges = source.read_all(&merges_file).await?;
        Self::from_vocab_merges(
            &vocab,
            &merges,
            config.as_deref().unwrap_or_default(),
            folder,
        )
    }

    /// From the bytes of a `tokenizer.json` (and optionally `tokenizer_config.json`, whose
    /// `added_tokens_decoder` is registered on top); `file` names it in errors.
    pub fn from_tokenizer_json(json: &[u8], config: Option<&[u8]>, file: &str) -> Result<Self> {
        let mut inner = Tokenizer::from_bytes(json).map_err(|e| tok_err(file, e))?;
        // Declared ids of the file's own added tokens.
        #[derive(Deserialize)]
        struct Listed {
            id: u32,
            content: String,
        }
        #[derive(Deserialize)]
        struct File {
            #[serde(default)]
            added_tokens: Vec<Listed>,
        }
        let listed: File = serde_json::from_slice(json).map_err(|e| tok_err(file, e))?;
        let mut expected: Vec<(u32, String)> = listed
            .added_tokens
            .into_iter()
            .map(|t| (t.id, t.content))
            .collect();
        if let Some(config) = config {
            let config = parse_config(config, file)?;
            let declared = declared_tokens(&config, file)?;
            inner
                .add_tokens(declared.iter().map(|(_, e)| e.to_added()))
                .map_err(|e| tok_err(file, e))?;
            expected.extend(declared.into_iter().map(|(id, e)| (id, e.content)));
        }
        let me = Self {
            inner,
            origin: file.to_owned(),
        };
        me.check_ids(&expected)?;
        Ok(me)
    }

    /// From `vocab.json`, `merges.txt` and `tokenizer_config.json` (bytes), built like
    /// `Qwen2Tokenizer`; `folder` names them in errors.
    pub fn from_vocab_merges(
        vocab: &[u8],
        merges: &[u8],
        config: &[u8],
        folder: &str,
    ) -> Result<Self> {
        let vocab_file = format!("{folder}/vocab.json");
        let merges_file = format!("{folder}/merges.txt");
        let config_file = format!("{folder}/tokenizer_config.json");
        let config = parse_config(config, &config_file)?;
        if let Some(class) = &config.tokenizer_class
            && !class.starts_with("Qwen2Tokenizer")
        {
            return Err(tok_err(
                &config_file,
                format!("tokenizer_class {class:?}: only Qwen2Tokenizer is supported"),
            ));
        }
        let declared = declared_tokens(&config, &config_file)?;

        let mut vocab: HashMap<String, u32> =
            serde_json::from_slice(vocab).map_err(|e| tok_err(&vocab_file, e))?;
        // The added tokens go into the model's vocabulary at their declared ids, so that
        // registering them below keeps those ids (the `tokenizers` crate would otherwise
        // number tokens it does not know from the vocabulary's size).
        for (id, e) in &declared {
            match vocab.get(&e.content) {
                Some(v) if v != id => {
                    return Err(tok_err(
                        &vocab_file,
                        format!(
                            "{:?} has id {v}, tokenizer_config.json says {id}",
                            e.content
                        ),
                    ));
                }
                _ => {
                    vocab.insert(e.content.clone(), *id);
                }
            }
        }
        let text = std::str::from_utf8(merges).map_err(|e| tok_err(&merges_file, e))?;
        let mut pairs = Vec::new();
        for (n, line) in text.lines().enumerate() {
            if line.is_empty() || (n == 0 && line.starts_with("#version")) {
                continue;
            }
            let mut parts = line.split(' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(a), Some(b), None) => pairs.push((a.to_owned(), b.to_owned())),
                _ => {
                    return Err(tok_err(
                        &merges_file,
                        format!(
                            "line {}: {line:?} is not two tokens separated by a space",
                            n + 1
                        ),
                    ));
                }
            }
        }
        let bpe = BPE::builder()
            .vocab_and_merges(vocab.into_iter().collect::<Vocab>(), pairs)
            .build()
            .map_err(|e| tok_err(&merges_file, e))?;

        let split = Split::new(
            SplitPattern::Regex(QWEN2_PRETOKENIZE_REGEX.into()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| tok_err(folder, e))?;
        let mut inner = Tokenizer::new(bpe);
        inner
            .with_normalizer(Some(NFC))
            .map_err(|e| tok_err(folder, e))?
            .with_pre_tokenizer(Some(Sequence::new(vec![
                split.into(),
                ByteLevel::new(false, true, false).into(),
            ])))
            .with_decoder(Some(ByteLevelDecoder::default()));
        inner
            .add_tokens(declared.iter().map(|(_, e)| e.to_added()))
            .map_err(|e| tok_err(&config_file, e))?;
        let me = Self {
            inner,
            origin: folder.to_owned(),
        };
        let expected: Vec<(u32, String)> = declared
            .into_iter()
            .map(|(id, e)| (id, e.content))
            .collect();
        me.check_ids(&expected)?;
        Ok(me)
    }

    /// Every `(id, content)` must map to `id`.
    fn check_ids(&self, expected: &[(u32, String)]) -> Result<()> {
        for (id, content) in expected {
            let got = self.inner.token_to_id(content);
            if got != Some(*id) {
                return Err(tok_err(
                    &self.origin,
                    format!(
                        "added token {content:?} should have id {id}, the tokenizer gives {got:?}"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The ids of `text` (added tokens such as `<|im_start|>` are recognised; nothing is added
    /// around the text, as `Qwen2Tokenizer` adds no BOS/EOS).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.inner
            .encode_fast(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| tok_err(&self.origin, format!("encoding {} chars: {e}", text.len())))
    }

    /// The text of `ids`; `skip_special_tokens` drops special added tokens (as
    /// `decode(..., skip_special_tokens=True)` does).
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| tok_err(&self.origin, format!("decoding {} ids: {e}", ids.len())))
    }

    /// The id of a token (vocabulary or added), if any.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Whether `content` is an added token (split out before BPE).
    pub fn is_added_token(&self, content: &str) -> bool {
        self.inner
            .get_added_tokens_decoder()
            .values()
            .any(|t| t.content == content)
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }
}

fn parse_config(bytes: &[u8], file: &str) -> Result<TokenizerConfig> {
    serde_json::from_slice(bytes).map_err(|e| tok_err(file, format!("not the expected JSON: {e}")))
}

/// `added_tokens_decoder` in id order, with the ids parsed.
fn declared_tokens(config: &TokenizerConfig, file: &str) -> Result<Vec<(u32, AddedTokenEntry)>> {
    let mut out = Vec::with_capacity(config.added_tokens_decoder.len());
    for (id, entry) in &config.added_tokens_decoder {
        let id: u32 = id.parse().map_err(|_| {
            tok_err(
                file,
                format!("added_tokens_decoder key {id:?} is not an id"),
            )
        })?;
        out.push((id, entry.clone()));
    }
    out.sort_by_key(|(id, _)| *id);
    Ok(out)
}
