//! `kiln hash path|file`: like `nix hash path` and `nix hash file`, print the
//! hash of each path's NAR serialisation or of each file's contents.

use anyhow::Context;
use kiln_nix::hash::{Encoding, Hash, HashAlgo, Hasher};
use kiln_nix::nar;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `kiln hash …`
#[derive(clap::Subcommand)]
pub enum HashCommand {
    /// Print the hash of the NAR serialisation of each PATH.
    Path(HashArgs),
    /// Print the hash of the contents of each regular FILE.
    File(HashArgs),
}

/// Options shared by `hash path` and `hash file`.
#[derive(clap::Args)]
pub struct HashArgs {
    /// Hash algorithm: sha256, sha1, sha512 or md5.
    #[arg(long = "type", default_value = "sha256", value_parser = parse_algo)]
    algo: HashAlgo,
    /// Print the hash in SRI form (the default).
    #[arg(long, group = "encoding")]
    sri: bool,
    /// Print the hash in Nix base32.
    #[arg(long, group = "encoding")]
    base32: bool,
    /// Print the hash in hexadecimal.
    #[arg(long, group = "encoding")]
    base16: bool,
    /// Print the hash in base64.
    #[arg(long, group = "encoding")]
    base64: bool,
    /// Paths to hash.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
}

impl HashArgs {
    fn encoding(&self) -> Encoding {
        match (self.base16, self.base32, self.base64) {
            (true, _, _) => Encoding::Base16,
            (_, true, _) => Encoding::Base32,
            (_, _, true) => Encoding::Base64,
            _ => Encoding::Sri,
        }
    }
}

fn parse_algo(s: &str) -> Result<HashAlgo, String> {
    HashAlgo::from_name(s).map_err(|e| e.to_string())
}

pub fn run(cmd: HashCommand) -> anyhow::Result<ExitCode> {
    let (args, nar_mode) = match cmd {
        HashCommand::Path(a) => (a, true),
        HashCommand::File(a) => (a, false),
    };
    let mut out = io::stdout().lock();
    for path in &args.paths {
        let hash = if nar_mode {
            let (_, digest) = nar::dump_path_with(path, io::sink(), args.algo)
                .with_context(|| format!("hashing '{}'", path.display()))?;
            digest.hash
        } else {
            hash_file(path, args.algo)?
        };
        writeln!(out, "{}", hash.encode(args.encoding(), false))
            .context("writing to standard output")?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Hashes a file's contents, streaming it.
fn hash_file(path: &Path, algo: HashAlgo) -> anyhow::Result<Hash> {
    let mut file =
        File::open(path).with_context(|| format!("opening file '{}'", path.display()))?;
    let mut hasher = Hasher::new(algo);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).with_context(|| format!("reading file '{}'", path.display())),
        };
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finish())
}
