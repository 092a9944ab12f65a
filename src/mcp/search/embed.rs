//! Static text embeddings: a table of one vector per WordPiece token, built from
//! all-MiniLM-L6-v2 (see `embeddings/README.md`), and a text's embedding as the
//! normalised sum of its tokens' vectors. No neural network runs here: embedding a
//! query is a few table lookups, so it costs microseconds.

use std::collections::HashMap;
use std::sync::OnceLock;

use unicode_normalization::char::is_combining_mark;
use unicode_normalization::UnicodeNormalization;

static VECTORS: &[u8] = include_bytes!("embeddings/vectors.bin");
static VOCAB: &str = include_str!("embeddings/vocab.txt");

/// Words longer than this are one unknown token, as in BERT's WordPiece.
const MAX_WORD_CHARS: usize = 100;

/// The token table, parsed once.
pub struct Table {
    ids: HashMap<&'static str, u32>,
    dims: usize,
    scales: Vec<f32>,
    values: &'static [u8],
}

/// A unit-length text embedding (all zeros for a text with no known token).
pub type Vector = Vec<f32>;

impl Table {
    /// The table compiled into the binary.
    pub fn get() -> &'static Table {
        static TABLE: OnceLock<Table> = OnceLock::new();
        TABLE.get_or_init(|| Table::parse(VECTORS, VOCAB).expect("the embedded embedding table is well-formed"))
    }

    /// `vectors.bin`: `SGEM`, u32 version 1, u32 token count, u32 dims, dims × f32
    /// scales, then count × dims i8 (little-endian, row-major).
    fn parse(bytes: &'static [u8], vocab: &'static str) -> Result<Table, String> {
        let word = |at: usize| -> Result<u32, String> {
            let b = bytes.get(at..at + 4).ok_or("truncated header")?;
            Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        if bytes.get(..4) != Some(b"SGEM".as_slice()) || word(4)? != 1 {
            return Err("not a version-1 SGEM table".into());
        }
        let (count, dims) = (word(8)? as usize, word(12)? as usize);
        let scales_end = 16 + 4 * dims;
        let scales = (0..dims).map(|i| word(16 + 4 * i).map(f32::from_bits)).collect::<Result<Vec<f32>, String>>()?;
        let values = bytes.get(scales_end..scales_end + count * dims).ok_or("truncated vectors")?;
        let ids: HashMap<&'static str, u32> = vocab.lines().enumerate().map(|(i, t)| (t, i as u32)).collect();
        if ids.len() != count {
            return Err(format!("{} vocabulary entries for {count} vectors", ids.len()));
        }
        Ok(Table { ids, dims, scales, values })
    }

    pub fn dims(&self) -> usize {
        self.dims
    }

    /// Whether `word` (lower-case) is a whole word of the vocabulary: an everyday
    /// word, or a name common enough to be one.
    pub fn knows(&self, word: &str) -> bool {
        self.ids.contains_key(word)
    }

    /// The WordPiece ids of `text`: split into words at spaces, punctuation and
    /// case changes (`getTinyImage` → `get tiny image`), lower-cased, accents
    /// removed, then greedy longest-match WordPiece; unknown words are skipped.
    pub fn token_ids(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        for word in super::lexical::words(text) {
            let word: String = word.nfd().filter(|c| !is_combining_mark(*c)).collect();
            self.wordpiece(&word, &mut ids);
        }
        ids
    }

    fn wordpiece(&self, word: &str, ids: &mut Vec<u32>) {
        if word.chars().count() > MAX_WORD_CHARS {
            return;
        }
        let start_len = ids.len();
        let mut start = 0;
        while start < word.len() {
            let mut end = word.len();
            let mut found = None;
            while start < end {
                let piece = &word[start..end];
                let id = if start == 0 { self.ids.get(piece) } else { self.ids.get(format!("##{piece}").as_str()) };
                if let Some(&id) = id {
                    found = Some(id);
                    break;
                }
                end = word[..end].char_indices().next_back().map_or(start, |(i, _)| i);
            }
            match found {
                Some(id) => {
                    ids.push(id);
                    start = end;
                }
                None => {
                    // As BERT does, a word with an unknown piece is unknown as a whole.
                    ids.truncate(start_len);
                    return;
                }
            }
        }
    }

    /// The embedding of `text`: the sum of its tokens' vectors, made unit length.
    pub fn embed(&self, text: &str) -> Vector {
        let mut sum = vec![0.0f32; self.dims];
        for id in self.token_ids(text) {
            let row = &self.values[id as usize * self.dims..(id as usize + 1) * self.dims];
            for ((acc, &value), scale) in sum.iter_mut().zip(row).zip(&self.scales) {
                *acc += f32::from(value as i8) * scale;
            }
        }
        normalize(&mut sum);
        sum
    }
}

/// `v` made unit length (left as it is when it is zero).
pub fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

/// The dot product of two embeddings: their cosine similarity.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_parses_and_related_words_are_near() {
        let table = Table::get();
        assert_eq!(table.dims(), table.scales.len());
        let similarity = |a: &str, b: &str| cosine(&table.embed(a), &table.embed(b));
        assert!(similarity("folder", "directory") > similarity("folder", "timezone"));
        assert!(similarity("picture", "image") > similarity("picture", "repository"));
        assert!((similarity("image", "image") - 1.0).abs() < 1e-4);
        assert!(table.embed("").iter().all(|&x| x == 0.0));
        assert_eq!(table.token_ids("getTinyImage"), table.token_ids("get tiny image"));
        assert_eq!(table.token_ids("Café"), table.token_ids("cafe"));
    }
}
