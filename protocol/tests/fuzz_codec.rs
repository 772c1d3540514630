//! Fuzzing the message codec: `decode` reads whatever arrives on a queue,
//! so every input must give an envelope or an error, never a panic, and an
//! envelope that decodes encodes back to something that decodes the same.
//! CI runs a fixed seed; longer runs: see docs/fuzzing.md.

use kiln_protocol::codec::{decode, encode, Envelope};
use kiln_protocol::message::{
    ArgValue, AutoArg, ExprSource, JobOptions, JobSpec, Message, SearchPathEntry,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};

const SEED: u64 = 0x6b69_6c6e_636f_6465;

fn config() -> Config {
    let mut c = Config::default();
    if matches!(c.rng_seed, RngSeed::Random) {
        c.rng_seed = RngSeed::Fixed(SEED);
    }
    c.failure_persistence = None;
    c
}

fn sample() -> Vec<u8> {
    encode(&Envelope::new(Message::SubmitJob(JobSpec {
        job_id: uuid::Uuid::nil(),
        source: ExprSource::File {
            path: "/src/default.nix".into(),
        },
        attr_paths: vec!["hello".into(), "a.b".into()],
        args: vec![AutoArg {
            name: "system".into(),
            value: ArgValue::Str("x86_64-linux".into()),
        }],
        search_path: vec![SearchPathEntry {
            prefix: Some("nixpkgs".into()),
            path: "/nixpkgs".into(),
        }],
        options: JobOptions {
            timeout_secs: Some(60),
            ..JobOptions::default()
        },
        sources: Vec::new(),
        attempt: uuid::Uuid::nil(),
    })))
    .unwrap()
}

fn check(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(env) = decode(bytes) {
        let again = encode(&env).unwrap();
        prop_assert_eq!(decode(&again).unwrap(), env);
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn decode_survives_mutated_messages(
        flips in proptest::collection::vec((any::<usize>(), 1..=255u8), 0..6),
        cut in any::<usize>(),
        insert in proptest::collection::vec(any::<u8>(), 0..12),
        at in any::<usize>(),
    ) {
        let mut b = sample();
        for (i, x) in flips {
            let i = i % b.len();
            b[i] ^= x;
        }
        let at = at % (b.len() + 1);
        b.splice(at..at, insert);
        let keep = b.len() - cut % (b.len() / 4 + 1);
        b.truncate(keep);
        check(&b)?;
    }

    #[test]
    fn decode_survives_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
        check(&bytes)?;
    }
}

#[test]
fn the_sample_round_trips() {
    let b = sample();
    assert_eq!(encode(&decode(&b).unwrap()).unwrap(), b);
}
