//! The in-memory hybrid index: every chunk's vector (exact search: a dot product per chunk) and a
//! BM25 keyword index (tantivy, English stemming), fused by reciprocal rank.
//!
//! Tenancy: a search names the chunks the caller may see (a mask over the slots, built from the
//! document ids the caller's governed session returns). Both halves rank *only* those: the
//! vector half skips the others, the keyword half filters them inside the collector and takes
//! its BM25 statistics (document count, average length, document frequencies) from the visible
//! chunks alone, so another tenant's documents move neither ranks, scores nor totals.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tantivy::collector::{Count, FilterCollector, TopDocs};
use tantivy::query::{BooleanQuery, Occur, Query, TermQuery};
use tantivy::schema::{
    FAST, Field, INDEXED, IndexRecordOption, STRING, Schema, TextFieldIndexing, TextOptions,
};
use tantivy::tokenizer::TokenStream;
use tantivy::{IndexReader, IndexWriter, TantivyDocument, Term};

use super::embed::DIM;
use crate::{Error, Result};

/// What a document is and what it is about: returned with hits and matched by filters.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DocMeta {
    pub doc_id: String,
    /// The table it comes from.
    pub source: &'static str,
    /// sop | incident | proposal | ticket
    pub kind: &'static str,
    pub title: String,
    pub links: Links,
    pub updated_at: DateTime<Utc>,
    /// Hash of title and body: an unchanged document is not re-chunked.
    #[serde(skip)]
    pub content_hash: u64,
}

/// The entities a document concerns.
#[derive(
    Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
pub struct Links {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plant_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warehouse_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub machine_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub machine_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sensor_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub part_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub supplier_id: Option<String>,
}

impl Links {
    /// The ids of the entities linked (machine types and sensor types are kinds, not ids).
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        [
            &self.machine_id,
            &self.plant_id,
            &self.warehouse_id,
            &self.customer_id,
            &self.part_id,
            &self.supplier_id,
        ]
        .into_iter()
        .filter_map(|v| v.as_deref())
    }
}

/// One chunk ready for the index.
pub struct IndexedChunk {
    pub no: i32,
    pub text: String,
    /// Hash of `text`: an unchanged chunk's vector is found by it ([`Index::vector`]).
    pub hash: u64,
    pub vector: [f32; DIM],
}

struct Slot {
    doc: Arc<DocMeta>,
    no: i32,
    text: String,
    hash: u64,
    /// Tokens of `text` as the keyword analyzer sees them (for BM25's average length).
    tokens: u64,
}

/// Which retrieval to run: both fused (the default), or one half alone (for evaluation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Hybrid,
    Keyword,
    Vector,
}

/// One document found: its best chunk.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Hit {
    pub doc: Arc<DocMeta>,
    pub chunk_no: i32,
    pub text: String,
    /// Reciprocal-rank-fusion score (or the half's own score when one half runs alone).
    pub score: f32,
}

/// Reciprocal-rank fusion constant (Cormack et al.): damps the weight of the top ranks.
const RRF_K: f32 = 60.0;
const ANALYZER: &str = "en_stem";

pub struct Index {
    slots: Vec<Option<Slot>>,
    vectors: Vec<f32>,
    free: Vec<usize>,
    by_doc: HashMap<String, (Arc<DocMeta>, Vec<usize>)>,
    /// A live slot per chunk-text hash.
    by_hash: HashMap<u64, usize>,
    /// The entity ids documents are linked to (machine, plant, warehouse, customer, part,
    /// supplier), as keyword terms, with the documents linked to each.
    entities: HashMap<String, std::collections::BTreeSet<Arc<str>>>,
    keyword: tantivy::Index,
    writer: IndexWriter,
    reader: IndexReader,
    f_slot: Field,
    f_doc: Field,
    f_text: Field,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("documents", &self.by_doc.len())
            .finish()
    }
}

fn tantivy_err(e: tantivy::TantivyError) -> Error {
    Error::Internal(format!("keyword index: {e}"))
}

impl Index {
    pub fn new() -> Result<Index> {
        let mut schema = Schema::builder();
        let f_slot = schema.add_u64_field("slot", FAST | INDEXED);
        let f_doc = schema.add_text_field("doc_id", STRING);
        let text = TextOptions::default().set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer(ANALYZER)
                .set_index_option(IndexRecordOption::WithFreqs),
        );
        let f_text = schema.add_text_field("text", text);
        let keyword = tantivy::Index::create_in_ram(schema.build());
        let writer = keyword
            .writer_with_num_threads(1, 50_000_000)
            .map_err(tantivy_err)?;
        let reader = keyword
            .reader_builder()
            .reload_policy(tantivy::ReloadPolicy::Manual)
            .try_into()
            .map_err(tantivy_err)?;
        Ok(Index {
            slots: Vec::new(),
            vectors: Vec::new(),
            free: Vec::new(),
            by_doc: HashMap::new(),
            by_hash: HashMap::new(),
            entities: HashMap::new(),
            keyword,
            writer,
            reader,
            f_slot,
            f_doc,
            f_text,
        })
    }

    pub fn documents(&self) -> usize {
        self.by_doc.len()
    }

    pub fn chunks(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// The document as indexed, if it is.
    pub fn get(&self, doc_id: &str) -> Option<&Arc<DocMeta>> {
        self.by_doc.get(doc_id).map(|(d, _)| d)
    }

    /// The ids of the documents indexed from `source`.
    pub fn documents_of(&self, source: &str) -> impl Iterator<Item = &str> {
        self.by_doc
            .values()
            .filter(move |(d, _)| d.source == source)
            .map(|(d, _)| d.doc_id.as_str())
    }

    /// Every indexed document with its chunks (for building another index from this one).
    pub fn export(&self) -> Vec<(DocMeta, Vec<IndexedChunk>)> {
        self.by_doc
            .values()
            .map(|(doc, slots)| {
                let chunks = slots
                    .iter()
                    .filter_map(|&slot| {
                        let s = self.slots[slot].as_ref()?;
                        let mut vector = [0f32; DIM];
                        vector.copy_from_slice(&self.vectors[slot * DIM..(slot + 1) * DIM]);
                        Some(IndexedChunk {
                            no: s.no,
                            text: s.text.clone(),
                            hash: s.hash,
                            vector,
                        })
                    })
                    .collect();
                ((**doc).clone(), chunks)
            })
            .collect()
    }

    /// The vector of an indexed chunk whose text hashes to `hash`.
    pub fn vector(&self, hash: u64) -> Option<[f32; DIM]> {
        let slot = *self.by_hash.get(&hash)?;
        let mut v = [0f32; DIM];
        v.copy_from_slice(&self.vectors[slot * DIM..(slot + 1) * DIM]);
        Some(v)
    }

    /// The keyword terms of `text`, as the index holds them.
    fn terms(&self, text: &str) -> Vec<String> {
        let text = identifiers_whole(text);
        let mut analyzer = self
            .keyword
            .tokenizers()
            .get(ANALYZER)
            .expect("tantivy registers en_stem");
        let mut stream = analyzer.token_stream(&text);
        let mut out = Vec::new();
        while stream.advance() {
            out.push(stream.token().text.clone());
        }
        out
    }

    /// Replaces the document's chunks (a document with no chunks is removed).
    pub fn upsert(&mut self, doc: DocMeta, chunks: Vec<IndexedChunk>) -> Result<()> {
        self.remove(&doc.doc_id);
        let doc = Arc::new(doc);
        let mut slots = Vec::with_capacity(chunks.len());
        for c in chunks {
            let tokens = self.terms(&c.text).len() as u64;
            let slot = match self.free.pop() {
                Some(s) => s,
                None => {
                    self.slots.push(None);
                    self.vectors.extend_from_slice(&[0.0; DIM]);
                    self.slots.len() - 1
                }
            };
            self.vectors[slot * DIM..(slot + 1) * DIM].copy_from_slice(&c.vector);
            let mut d = TantivyDocument::default();
            d.add_u64(self.f_slot, slot as u64);
            d.add_text(self.f_doc, &doc.doc_id);
            d.add_text(self.f_text, identifiers_whole(&c.text));
            self.writer.add_document(d).map_err(tantivy_err)?;
            self.by_hash.insert(c.hash, slot);
            self.slots[slot] = Some(Slot {
                doc: doc.clone(),
                no: c.no,
                text: c.text,
                hash: c.hash,
                tokens,
            });
            slots.push(slot);
        }
        if !slots.is_empty() {
            let id: Arc<str> = Arc::from(doc.doc_id.as_str());
            for e in doc.links.ids() {
                self.entities
                    .entry(entity_term(e))
                    .or_default()
                    .insert(id.clone());
            }
            self.by_doc.insert(doc.doc_id.clone(), (doc, slots));
        }
        Ok(())
    }

    pub fn remove(&mut self, doc_id: &str) -> bool {
        let Some((doc, slots)) = self.by_doc.remove(doc_id) else {
            return false;
        };
        for e in doc.links.ids() {
            let term = entity_term(e);
            if let Some(docs) = self.entities.get_mut(&term) {
                docs.remove(doc_id);
                if docs.is_empty() {
                    self.entities.remove(&term);
                }
            }
        }
        for s in slots {
            if let Some(old) = self.slots[s].take()
                && self.by_hash.get(&old.hash) == Some(&s)
            {
                self.by_hash.remove(&old.hash);
            }
            self.free.push(s);
        }
        self.writer
            .delete_term(Term::from_field_text(self.f_doc, doc_id));
        true
    }

    /// Every indexed document id.
    pub fn document_ids(&self) -> impl Iterator<Item = &str> {
        self.by_doc.keys().map(String::as_str)
    }

    /// Makes the changes since the last commit searchable.
    pub fn commit(&mut self) -> Result<()> {
        self.writer.commit().map_err(tantivy_err)?;
        self.reader.reload().map_err(tantivy_err)?;
        Ok(())
    }

    /// The slots whose document `visible` accepts.
    pub fn mask(&self, visible: impl Fn(&DocMeta) -> bool) -> Arc<Vec<bool>> {
        Arc::new(
            self.slots
                .iter()
                .map(|s| s.as_ref().is_some_and(|s| visible(&s.doc)))
                .collect(),
        )
    }

    /// The `k` best documents among the visible chunks (`mask`) for a query given as text and
    /// as its embedding.
    pub fn search(
        &self,
        text: &str,
        vector: &[f32; DIM],
        mask: &Arc<Vec<bool>>,
        k: usize,
        mode: Mode,
    ) -> Result<Vec<Hit>> {
        // Each half ranks more candidates than asked so fusion has overlap to work with.
        let depth = (k * 5).max(50);
        let by_vector = if mode == Mode::Keyword {
            Vec::new()
        } else {
            self.vector_top(vector, mask, depth)
        };
        let by_keyword = if mode == Mode::Vector {
            Vec::new()
        } else {
            self.keyword_top(text, mask, depth)?
        };
        // Entities the query names by id ("M-012", "PLANT-2", "WH-03"): the documents linked
        // to them, ranked by meaning. Named ids are the most precise thing a question says,
        // and neither half alone weighs them (the vectors hardly see them; BM25 trades them
        // off against every other word).
        let by_entity = if mode == Mode::Hybrid {
            self.entity_top(text, vector, mask, depth)
        } else {
            Vec::new()
        };
        // Collapse each list to documents (a document's best chunk), then fuse by rank. The
        // chunk shown is the vector half's best one when it found the document.
        let mut fused: HashMap<&str, (f32, usize)> = HashMap::new();
        for list in [&by_vector, &by_keyword, &by_entity] {
            let mut seen = std::collections::HashSet::new();
            for &(slot, score) in list.iter() {
                let s = self.slots[slot].as_ref().expect("ranked slots are live");
                if !seen.insert(s.doc.doc_id.as_str()) {
                    continue;
                }
                let contribution = match mode {
                    Mode::Hybrid => 1.0 / (RRF_K + seen.len() as f32),
                    // One half alone reports its own score.
                    Mode::Keyword | Mode::Vector => score,
                };
                fused
                    .entry(s.doc.doc_id.as_str())
                    .and_modify(|e| e.0 += contribution)
                    .or_insert((contribution, slot));
            }
        }
        let mut hits: Vec<Hit> = fused
            .into_values()
            .map(|(score, slot)| {
                let s = self.slots[slot].as_ref().expect("live");
                Hit {
                    doc: s.doc.clone(),
                    chunk_no: s.no,
                    text: s.text.clone(),
                    score,
                }
            })
            .collect();
        hits.sort_by(|a, b| {
            b.score
                .total_cmp(&a.score)
                .then_with(|| a.doc.doc_id.cmp(&b.doc.doc_id))
        });
        hits.truncate(k);
        Ok(hits)
    }

    /// The visible chunks of documents linked to every entity `text` names by id (or, when
    /// no document is linked to all, to any of them), nearest to `q` first.
    fn entity_top(
        &self,
        text: &str,
        q: &[f32; DIM],
        mask: &[bool],
        depth: usize,
    ) -> Vec<(usize, f32)> {
        let mut named: Vec<String> = identifiers_whole(text)
            .split(|c: char| !c.is_alphanumeric())
            .map(str::to_lowercase)
            .filter(|t| self.entities.contains_key(t))
            .collect();
        named.sort();
        named.dedup();
        // Per linked document, how many of the named entities it is linked to.
        let mut linked: HashMap<&str, usize> = HashMap::new();
        for docs in named.iter().filter_map(|t| self.entities.get(t)) {
            for d in docs {
                *linked.entry(d).or_default() += 1;
            }
        }
        let Some(&most) = linked.values().max() else {
            return Vec::new();
        };
        let mut scored: Vec<(usize, f32)> = linked
            .into_iter()
            .filter(|(_, n)| *n == most)
            .filter_map(|(d, _)| self.by_doc.get(d))
            .flat_map(|(_, slots)| slots.iter().copied())
            .filter(|&slot| mask.get(slot).copied().unwrap_or(false))
            .map(|slot| (slot, self.similarity(slot, q)))
            .collect();
        top(&mut scored, depth);
        scored
    }

    /// Cosine similarity of a chunk to `q` (vectors are unit length).
    fn similarity(&self, slot: usize, q: &[f32; DIM]) -> f32 {
        let v: &[f32; DIM] = self.vectors[slot * DIM..(slot + 1) * DIM]
            .try_into()
            .expect("a slot holds one vector");
        super::embed::cosine(v, q)
    }

    /// Exact nearest chunks by cosine.
    fn vector_top(&self, q: &[f32; DIM], mask: &[bool], depth: usize) -> Vec<(usize, f32)> {
        let mut scored: Vec<(usize, f32)> = mask
            .iter()
            .enumerate()
            .filter(|(_, ok)| **ok)
            .map(|(slot, _)| (slot, self.similarity(slot, q)))
            .collect();
        top(&mut scored, depth);
        scored
    }

    /// BM25 over the visible chunks only, with statistics of the visible chunks only.
    fn keyword_top(
        &self,
        text: &str,
        mask: &Arc<Vec<bool>>,
        depth: usize,
    ) -> Result<Vec<(usize, f32)>> {
        let mut terms = self.terms(text);
        terms.sort();
        terms.dedup();
        if terms.is_empty() {
            return Ok(Vec::new());
        }
        let clauses: Vec<(Occur, Box<dyn Query>)> = terms
            .iter()
            .map(|t| {
                let q: Box<dyn Query> = Box::new(TermQuery::new(
                    Term::from_field_text(self.f_text, t),
                    IndexRecordOption::WithFreqs,
                ));
                (Occur::Should, q)
            })
            .collect();
        let query = BooleanQuery::new(clauses);
        let searcher = self.reader.searcher();
        let visible = {
            let m = mask.clone();
            move |slot: u64| m.get(slot as usize).copied().unwrap_or(false)
        };
        let stats = VisibleStats {
            searcher: &searcher,
            visible: visible.clone(),
            docs: mask.iter().filter(|v| **v).count() as u64,
            tokens: self
                .slots
                .iter()
                .zip(mask.iter())
                .filter(|(_, v)| **v)
                .filter_map(|(s, _)| s.as_ref().map(|s| s.tokens))
                .sum(),
            f_text: self.f_text,
        };
        let collector = FilterCollector::new(
            "slot".to_string(),
            visible,
            TopDocs::with_limit(depth).order_by_score(),
        );
        let found = searcher
            .search_with_statistics_provider(&query, &collector, &stats)
            .map_err(tantivy_err)?;
        let mut out = Vec::with_capacity(found.len());
        for (score, addr) in found {
            let column = searcher
                .segment_reader(addr.segment_ord)
                .fast_fields()
                .u64("slot")
                .map_err(tantivy_err)?;
            if let Some(slot) = column.first(addr.doc_id) {
                out.push((slot as usize, score));
            }
        }
        Ok(out)
    }
}

/// `text` with the hyphen of identifiers such as `M-0012`, `PLANT-2` or `WH-03` (letters, a
/// hyphen, a digit) taken out, so the keyword index holds each as one term (`m0012`) instead of
/// a common letter and a number shared by every kind of id.
fn identifiers_whole(text: &str) -> std::borrow::Cow<'_, str> {
    let bytes = text.as_bytes();
    let joins = |i: usize| {
        bytes[i] == b'-'
            && i > 0
            && bytes[i - 1].is_ascii_alphabetic()
            && bytes.get(i + 1).is_some_and(u8::is_ascii_digit)
    };
    if !(0..bytes.len()).any(joins) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    for (i, ch) in text.char_indices() {
        if !(ch == '-' && joins(i)) {
            out.push(ch);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// An entity id as a keyword term: `M-012` → `m012`.
fn entity_term(id: &str) -> String {
    identifiers_whole(id).to_lowercase()
}

/// BM25 statistics of the visible chunks (not of the whole index).
struct VisibleStats<'a, P> {
    searcher: &'a tantivy::Searcher,
    visible: P,
    docs: u64,
    tokens: u64,
    f_text: Field,
}

impl<P> tantivy::query::Bm25StatisticsProvider for VisibleStats<'_, P>
where
    P: Fn(u64) -> bool + Send + Sync + Clone + 'static,
{
    fn total_num_tokens(&self, field: Field) -> tantivy::Result<u64> {
        debug_assert_eq!(field, self.f_text);
        Ok(self.tokens)
    }

    fn total_num_docs(&self) -> tantivy::Result<u64> {
        Ok(self.docs)
    }

    fn doc_freq(&self, term: &Term) -> tantivy::Result<u64> {
        let q = TermQuery::new(term.clone(), IndexRecordOption::Basic);
        let count = FilterCollector::new("slot".to_string(), self.visible.clone(), Count);
        Ok(self.searcher.search(&q, &count)? as u64)
    }
}

/// Keeps the `n` best by score, best first (ties by slot, so results are deterministic).
fn top(scored: &mut Vec<(usize, f32)>, n: usize) {
    let order = |a: &(usize, f32), b: &(usize, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if scored.len() > n {
        scored.select_nth_unstable_by(n, order);
        scored.truncate(n);
    }
    scored.sort_by(order);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(seed: usize) -> [f32; DIM] {
        let mut v = [0f32; DIM];
        v[seed % DIM] = 1.0;
        v
    }

    fn doc(id: &str, plant: &str) -> DocMeta {
        DocMeta {
            doc_id: id.into(),
            source: "knowledge.sops",
            kind: "sop",
            title: id.into(),
            links: Links {
                plant_id: Some(plant.into()),
                ..Default::default()
            },
            updated_at: Utc::now(),
            content_hash: 0,
        }
    }

    fn chunk(text: &str, v: usize) -> Vec<IndexedChunk> {
        vec![IndexedChunk {
            no: 0,
            hash: crate::model::stable_hash(&[text]),
            text: text.into(),
            vector: unit(v),
        }]
    }

    #[test]
    fn identifiers_are_single_keyword_terms() {
        assert_eq!(identifiers_whole("M-0012 at PLANT-2"), "M0012 at PLANT2");
        assert_eq!(
            identifiers_whole("re-run the well-known 3-step check"),
            "re-run the well-known 3-step check"
        );
        let ix = Index::new().unwrap();
        let terms = ix.terms("Has M-0012 had this?");
        assert!(
            terms.contains(&"m0012".to_string()) && !terms.contains(&"0012".to_string()),
            "{terms:?}"
        );
    }

    #[test]
    fn hidden_documents_move_neither_ranks_nor_scores() {
        // The same visible documents, once alone and once beside many hidden ones that share
        // the query's words: the caller's results and scores must be identical.
        let visible = [
            ("A", "bearing noise on the spindle", 1),
            ("B", "hydraulic pressure drops slowly", 2),
            ("C", "bearing replacement procedure", 3),
        ];
        let build = |hidden: usize| {
            let mut ix = Index::new().unwrap();
            for (id, text, v) in visible {
                ix.upsert(doc(id, "PLANT-1"), chunk(text, v)).unwrap();
            }
            for i in 0..hidden {
                ix.upsert(
                    doc(&format!("H{i}"), "PLANT-2"),
                    chunk("bearing bearing spindle noise", 1),
                )
                .unwrap();
            }
            ix.commit().unwrap();
            ix
        };
        let alone = build(0);
        let crowded = build(40);
        for mode in [Mode::Hybrid, Mode::Keyword, Mode::Vector] {
            let run = |ix: &Index| {
                let mask = ix.mask(|d| d.links.plant_id.as_deref() == Some("PLANT-1"));
                ix.search("bearing noise", &unit(1), &mask, 10, mode)
                    .unwrap()
                    .into_iter()
                    .map(|h| (h.doc.doc_id.clone(), h.score))
                    .collect::<Vec<_>>()
            };
            let (a, b) = (run(&alone), run(&crowded));
            assert_eq!(a, b, "{mode:?}");
            assert!(!a.is_empty() && a.iter().all(|(id, _)| !id.starts_with('H')));
        }
    }

    #[test]
    fn updates_replace_and_removals_disappear() {
        let mut ix = Index::new().unwrap();
        ix.upsert(doc("A", "P"), chunk("conveyor belt slipping", 1))
            .unwrap();
        ix.commit().unwrap();
        let all = |ix: &Index, q: &str, v: usize| {
            let mask = ix.mask(|_| true);
            ix.search(q, &unit(v), &mask, 5, Mode::Keyword)
                .unwrap()
                .into_iter()
                .map(|h| h.text)
                .collect::<Vec<_>>()
        };
        assert_eq!(all(&ix, "belt", 1).len(), 1);
        ix.upsert(doc("A", "P"), chunk("compressor oil leak", 2))
            .unwrap();
        ix.commit().unwrap();
        assert!(all(&ix, "belt", 1).is_empty());
        assert_eq!(
            all(&ix, "leaking compressor", 2),
            vec!["compressor oil leak"]
        );
        assert!(ix.remove("A"));
        ix.commit().unwrap();
        assert!(all(&ix, "compressor", 2).is_empty());
        assert_eq!(ix.documents(), 0);
        assert_eq!(ix.chunks(), 0);
    }
}
