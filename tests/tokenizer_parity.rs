//! Our tokenizer against llama.cpp's on the same GGUF vocabulary: identical ids on 1,200 varied
//! strings (with and without special-token parsing), identical token attributes, and exact round
//! trips through our detokenizer.

mod common;

use std::path::Path;

use dycoke_oracle::RefModel;
use dycoke::ggml::GgmlType;
use dycoke::gguf::GgufFile;
use dycoke::tokenizer::Tokenizer;

fn check_vocab(path: &Path) {
    let file = GgufFile::open(path).unwrap();
    let ours = Tokenizer::from_gguf(&file).unwrap();
    let reference = RefModel::load(path, true).expect("llama.cpp loads the vocabulary");
    assert_eq!(ours.n_vocab(), reference.n_vocab());

    let mut strings = common::strings::edge_cases();
    strings.extend(common::strings::varied(1200, 7));
    let mut checked = 0;
    for s in &strings {
        for parse_special in [true, false] {
            let a: Vec<i32> = ours.encode(s, false, parse_special).iter().map(|&t| t as i32).collect();
            let b = reference.tokenize(s, false, parse_special);
            assert_eq!(a, b, "ids differ for {s:?} (parse_special {parse_special})");
            checked += 1;
        }
        // Round trip: special tokens render as their text.
        let ids = ours.encode(s, false, true);
        assert_eq!(ours.decode(&ids, true), *s, "round trip of {s:?}");
    }
    eprintln!("{}: {checked} tokenizations identical, {} round trips exact", path.display(), strings.len());
}

#[test]
fn builtin_vocabulary_matches_llama_cpp() {
    check_vocab(&common::random_model(GgmlType::F32));
}

#[test]
fn real_vocabulary_matches_llama_cpp() {
    let Some(path) = common::real_model() else { return };
    check_vocab(&path);
}

#[test]
fn token_attributes_and_pieces_match_llama_cpp() {
    for path in [Some(common::random_model(GgmlType::F32)), common::real_model()].into_iter().flatten() {
        let file = GgufFile::open(&path).unwrap();
        let ours = Tokenizer::from_gguf(&file).unwrap();
        let reference = RefModel::load(&path, true).unwrap();
        for id in 0..ours.n_vocab() as u32 {
            for special in [false, true] {
                assert_eq!(ours.token_bytes(id, special), reference.token_to_piece(id as i32, special), "token {id} special {special}");
            }
            assert_eq!(ours.is_end_of_generation(id), reference.is_eog(id as i32), "end-of-generation flag of token {id} {:?}", ours.text(id));
        }
    }
}
