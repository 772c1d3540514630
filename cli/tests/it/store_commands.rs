//! `kiln copy`, `kiln path-info` and `kiln store-gateway` as commands: a
//! closure built into one local store travels through a running gateway
//! (an authenticated upload, signed by the gateway's key) into another
//! local store, and path-info describes it the same way everywhere.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn kiln(cache: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .env("XDG_CACHE_HOME", cache)
        .current_dir(cache)
        .output()
        .expect("running kiln")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Kills the gateway when the test ends, however it ends.
struct Gateway(Child);

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_gateway(store: &Path, token: &Path, key: &Path) -> (Gateway, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["store-gateway", "--store", store.to_str().unwrap()])
        .args(["--listen", &addr])
        .args(["--upload-token-file", token.to_str().unwrap()])
        .args(["--secret-key-file", key.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting the gateway");
    let gateway = Gateway(child);
    let t = Instant::now();
    while TcpStream::connect(&addr).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "gateway did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (gateway, format!("http://{addr}"))
}

#[test]
fn a_closure_travels_through_the_gateway_with_its_signature() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let example = kiln_tests::workspace_root().join("examples/default.nix");
    let built = t.join("built");
    // An output that refers to another (hello), so it has a closure.
    let expr = format!(
        "with import {} {{ }}; mkDerivation {{ name = \"refers\"; script = \"echo ${{hello}} > $out\"; }}",
        example.display()
    );
    let out = kiln(
        t,
        &[
            "build",
            "-E",
            &expr,
            "--no-out-link",
            "--store",
            built.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let hello = text(&out.stdout).trim().to_string();

    let token = t.join("token");
    std::fs::write(&token, "s3cret-token\n").unwrap();
    let keys = kiln_tests::shared_dir().join("conformance/binary-cache");
    let public = std::fs::read_to_string(keys.join("public.key")).unwrap();
    let served = t.join("served");
    let (_gateway, url) = start_gateway(&served, &token, &keys.join("secret.key"));

    // Without the token the gateway is read-only.
    let denied = kiln(
        t,
        &[
            "copy",
            "--from",
            built.to_str().unwrap(),
            "--to",
            &url,
            &hello,
        ],
    );
    assert!(!denied.status.success());
    let err = text(&denied.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");

    let up = kiln(
        t,
        &[
            "copy",
            "--from",
            built.to_str().unwrap(),
            "--to",
            &url,
            "--token-file",
            token.to_str().unwrap(),
            &hello,
        ],
    );
    assert!(up.status.success(), "{}", text(&up.stderr));

    // The gateway signed what it accepted: path-info over HTTP shows the
    // signature, and a client that trusts only that key accepts it.
    let info = kiln(
        t,
        &[
            "path-info",
            "--store",
            &url,
            "--json",
            "--trusted-public-key",
            public.trim(),
            &hello,
        ],
    );
    assert!(info.status.success(), "{}", text(&info.stderr));
    let remote: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    let sigs = remote[0]["signatures"].as_array().unwrap();
    assert!(
        sigs.iter()
            .any(|s| s.as_str().unwrap().starts_with("kiln-test-1:")),
        "{remote}"
    );
    let local = kiln(
        t,
        &[
            "path-info",
            "--store",
            built.to_str().unwrap(),
            "--json",
            &hello,
        ],
    );
    let local: serde_json::Value = serde_json::from_slice(&local.stdout).unwrap();
    for field in ["path", "narHash", "narSize", "references", "deriver"] {
        assert_eq!(remote[0][field], local[0][field], "{field}");
    }

    // And back down into a third store, whole closure, then only the path.
    let copy = t.join("copy");
    let down = kiln(
        t,
        &[
            "copy",
            "--from",
            &url,
            "--to",
            copy.to_str().unwrap(),
            "--trusted-public-key",
            public.trim(),
            &hello,
        ],
    );
    assert!(down.status.success(), "{}", text(&down.stderr));
    let refs: Vec<String> = local[0]["references"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    assert_eq!(refs.len(), 1, "the output refers to hello: {refs:?}");
    for p in refs.iter().chain([&hello]) {
        let i = kiln(t, &["path-info", "--store", copy.to_str().unwrap(), p]);
        assert!(i.status.success(), "{p}: {}", text(&i.stderr));
    }
    let only = t.join("only");
    let one = kiln(
        t,
        &[
            "copy",
            "--from",
            built.to_str().unwrap(),
            "--to",
            only.to_str().unwrap(),
            "--no-closure",
            &hello,
        ],
    );
    assert!(one.status.success(), "{}", text(&one.stderr));
    let missing = kiln(
        t,
        &["path-info", "--store", only.to_str().unwrap(), &refs[0]],
    );
    assert!(!missing.status.success(), "--no-closure copied a reference");
}
