//! Unit tests of the strict NAR reader on synthetic hostile input.

use super::*;

/// Builds a NAR-like stream from raw strings.
fn raw(tokens: &[&[u8]]) -> Vec<u8> {
    let mut v = Vec::new();
    for t in tokens {
        v.extend_from_slice(&(t.len() as u64).to_le_bytes());
        v.extend_from_slice(t);
        v.resize(v.len() + padding(t.len() as u64), 0);
    }
    v
}

fn dir_with(entries: &[&[u8]]) -> Vec<u8> {
    let mut t: Vec<&[u8]> = vec![MAGIC, b"(", b"type", b"directory"];
    for e in entries {
        t.extend_from_slice(&[b"entry", b"(", b"name", e, b"node"]);
        t.extend_from_slice(&[b"(", b"type", b"symlink", b"target", b"x", b")", b")"]);
    }
    t.push(b")");
    raw(&t)
}

/// Drains every event, reading all file contents.
fn parse(nar: &[u8]) -> Result<usize, ReadError> {
    let mut r = NarReader::new(nar);
    let mut n = 0;
    while let Some(ev) = r.next()? {
        if let Event::File { contents, .. } = ev {
            contents.finish()?;
        }
        n += 1;
    }
    Ok(n)
}

#[test]
fn accepts_a_sorted_directory() {
    assert_eq!(parse(&dir_with(&[b"a", b"b", b"ba"])).unwrap(), 5);
    assert_eq!(parse(&dir_with(&[])).unwrap(), 2);
}

#[test]
fn refuses_bad_names_with_offsets() {
    let e = parse(&dir_with(&[b".."])).unwrap_err();
    assert!(
        matches!(
            e,
            ReadError::Name {
                offset: 128,
                reason: NameError::Dot,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("at byte 128"), "{e}");
    for (name, reason) in [
        (&b""[..], NameError::Empty),
        (b".", NameError::Dot),
        (b"a/b", NameError::Slash),
        (b"a\0b", NameError::Nul),
    ] {
        match parse(&dir_with(&[name])) {
            Err(ReadError::Name { reason: r, .. }) => assert_eq!(r, reason),
            other => panic!("{other:?}"),
        }
    }
    let long = vec![b'n'; MAX_NAME_LEN + 1];
    assert!(matches!(
        parse(&dir_with(&[&long])),
        Err(ReadError::TooLong { .. })
    ));
    assert!(matches!(
        parse(&dir_with(&[b"b", b"a"])),
        Err(ReadError::Unsorted { .. })
    ));
    assert!(matches!(
        parse(&dir_with(&[b"a", b"a"])),
        Err(ReadError::Unsorted { .. })
    ));
}

#[test]
fn refuses_structure_errors() {
    assert!(matches!(
        parse(&raw(&[b"nix-archive-2"])),
        Err(ReadError::BadMagic)
    ));
    let ok = raw(&[MAGIC, b"(", b"type", b"regular", b"contents", b"hi", b")"]);
    assert_eq!(parse(&ok).unwrap(), 1);
    let mut trailing = ok.clone();
    trailing.push(0);
    assert!(
        matches!(parse(&trailing), Err(ReadError::Trailing { offset }) if offset == ok.len() as u64)
    );
    for cut in 0..ok.len() {
        assert!(
            matches!(
                parse(&ok[..cut]),
                Err(ReadError::Truncated { .. } | ReadError::BadMagic)
            ),
            "{cut}"
        );
    }
    let mut bad_pad = ok.clone();
    bad_pad[ok.len() - 17] = 1; // last padding byte of "hi"
    assert!(matches!(parse(&bad_pad), Err(ReadError::Padding { .. })));
    let sym_exec = raw(&[
        MAGIC,
        b"(",
        b"type",
        b"symlink",
        b"target",
        b"x",
        b"executable",
        b"",
        b")",
    ]);
    let e = parse(&sym_exec).unwrap_err();
    assert!(e.to_string().contains("found 'executable'"), "{e}");
    let unknown = raw(&[MAGIC, b"(", b"type", b"fifo", b")"]);
    assert!(matches!(
        parse(&unknown),
        Err(ReadError::UnknownType { offset: 56, .. })
    ));
    let empty_target = raw(&[MAGIC, b"(", b"type", b"symlink", b"target", b"", b")"]);
    assert!(matches!(
        parse(&empty_target),
        Err(ReadError::Target { .. })
    ));
}

#[test]
fn huge_lengths_do_not_allocate() {
    let mut nar = raw(&[MAGIC, b"(", b"type", b"regular", b"contents"]);
    nar.extend_from_slice(&(1u64 << 62).to_le_bytes());
    nar.extend_from_slice(b"abc");
    assert!(matches!(
        parse(&nar),
        Err(ReadError::Truncated {
            what: "file contents",
            ..
        })
    ));
    let mut nar = raw(&[MAGIC, b"(", b"type"]);
    nar.extend_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(parse(&nar), Err(ReadError::Unexpected { .. })));
}

#[test]
fn poisoned_after_error() {
    let mut r = NarReader::new(&b"garbage"[..]);
    assert!(r.next().is_err());
    assert!(matches!(r.next(), Err(ReadError::AfterError)));
}

#[test]
fn unread_contents_are_skipped() {
    let nar = raw(&[
        MAGIC,
        b"(",
        b"type",
        b"regular",
        b"executable",
        b"",
        b"contents",
        b"0123456789",
        b")",
    ]);
    let mut r = NarReader::new(&nar[..]);
    match r.next().unwrap() {
        Some(Event::File {
            executable: true,
            mut contents,
            ..
        }) => {
            let mut b = [0u8; 3];
            contents.read_exact(&mut b).unwrap();
            assert_eq!(&b, b"012");
            assert_eq!(contents.remaining(), 7);
        }
        other => panic!("{other:?}"),
    }
    assert!(r.next().unwrap().is_none());
    assert_eq!(r.offset(), nar.len() as u64);
}
