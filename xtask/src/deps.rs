//! The dependency policy, checked by `cargo xtask lint` (and so by CI).
//!
//! Every package in the dependency graph (`cargo metadata`, all targets and
//! platforms) must come from crates.io or this workspace — no git or other
//! registries — and carry a licence expression that can be satisfied with
//! the permissive licences in [`ALLOWED`]. This is the part of `cargo deny`
//! the project needs, without building and installing `cargo deny` on every
//! CI machine (it takes minutes); `cargo metadata` is already there.

use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// Licences a dependency may be used under (SPDX identifiers).
pub const ALLOWED: [&str; 13] = [
    "MIT",
    "MIT-0",
    "Apache-2.0",
    "Apache-2.0 WITH LLVM-exception",
    "BSD-2-Clause",
    "BSD-3-Clause",
    "ISC",
    "Unicode-3.0",
    "Zlib",
    "Unlicense",
    "CC0-1.0",
    "BSL-1.0",
    "0BSD",
];

const CRATES_IO: &str = "registry+https://github.com/rust-lang/crates.io-index";

#[derive(Deserialize)]
struct Metadata {
    packages: Vec<Package>,
}

#[derive(Deserialize)]
struct Package {
    name: String,
    version: String,
    license: Option<String>,
    source: Option<String>,
}

/// Checks the workspace at `root`; an error lists every package at fault.
pub fn check(root: &std::path::Path) -> Result<()> {
    let out = Command::new("cargo")
        .current_dir(root)
        .args(["metadata", "--format-version", "1", "--locked"])
        .output()
        .context("running cargo metadata")?;
    if !out.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let meta: Metadata =
        serde_json::from_slice(&out.stdout).context("reading cargo metadata's output")?;
    let mut faults = Vec::new();
    for p in &meta.packages {
        let id = format!("{} {}", p.name, p.version);
        match p.source.as_deref() {
            None | Some(CRATES_IO) => {}
            Some(other) => faults.push(format!("{id}: comes from {other}, not crates.io")),
        }
        match p.license.as_deref() {
            None => faults.push(format!("{id}: declares no SPDX licence expression")),
            Some(expr) => match allowed(expr) {
                Ok(true) => {}
                Ok(false) => faults.push(format!(
                    "{id}: licence {expr:?} needs one not in the allowed list"
                )),
                Err(e) => faults.push(format!("{id}: licence {expr:?}: {e}")),
            },
        }
    }
    if !faults.is_empty() {
        bail!(
            "dependency policy (xtask/src/deps.rs): {} package(s) at fault:\n  {}",
            faults.len(),
            faults.join("\n  ")
        );
    }
    eprintln!(
        "deps: {} packages, all from crates.io or the workspace, all under allowed licences",
        meta.packages.len()
    );
    Ok(())
}

/// Whether the SPDX expression `expr` can be satisfied with [`ALLOWED`]
/// licences. Understands `OR`, `AND`, `WITH`, parentheses, and the old `/`
/// for `OR`.
pub fn allowed(expr: &str) -> Result<bool, String> {
    let spaced = expr
        .replace('(', " ( ")
        .replace(')', " ) ")
        .replace('/', " OR ");
    let tokens: Vec<&str> = spaced.split_whitespace().collect();
    let mut pos = 0;
    let v = or_expr(&tokens, &mut pos)?;
    if pos != tokens.len() {
        return Err(format!("unexpected {:?}", tokens[pos]));
    }
    Ok(v)
}

fn or_expr(t: &[&str], pos: &mut usize) -> Result<bool, String> {
    let mut v = and_expr(t, pos)?;
    while t.get(*pos) == Some(&"OR") {
        *pos += 1;
        v |= and_expr(t, pos)?;
    }
    Ok(v)
}

fn and_expr(t: &[&str], pos: &mut usize) -> Result<bool, String> {
    let mut v = term(t, pos)?;
    while t.get(*pos) == Some(&"AND") {
        *pos += 1;
        v &= term(t, pos)?;
    }
    Ok(v)
}

fn term(t: &[&str], pos: &mut usize) -> Result<bool, String> {
    match t.get(*pos) {
        Some(&"(") => {
            *pos += 1;
            let v = or_expr(t, pos)?;
            if t.get(*pos) != Some(&")") {
                return Err("a ( without its )".into());
            }
            *pos += 1;
            Ok(v)
        }
        Some(id) if !["OR", "AND", "WITH", ")"].contains(id) => {
            *pos += 1;
            let mut name = id.to_string();
            if t.get(*pos) == Some(&"WITH") {
                let exception = t.get(*pos + 1).ok_or("WITH without an exception")?;
                name = format!("{name} WITH {exception}");
                *pos += 2;
            }
            Ok(ALLOWED.contains(&name.as_str()))
        }
        other => Err(format!("expected a licence, found {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expressions() {
        for (e, ok) in [
            ("MIT", true),
            ("MIT OR Apache-2.0", true),
            ("MIT/Apache-2.0", true),
            ("Apache-2.0 / MIT", true),
            ("GPL-3.0", false),
            ("GPL-3.0 OR MIT", true),
            ("GPL-3.0 AND MIT", false),
            ("(MIT OR Apache-2.0) AND Unicode-3.0", true),
            ("MIT OR Apache-2.0 OR LGPL-2.1-or-later", true),
            ("Apache-2.0 WITH LLVM-exception OR Apache-2.0 OR MIT", true),
            ("GPL-2.0 WITH Classpath-exception-2.0", false),
            (
                "ISC AND (Apache-2.0 OR ISC) AND Apache-2.0 AND MIT AND BSD-3-Clause",
                true,
            ),
        ] {
            assert_eq!(allowed(e), Ok(ok), "{e}");
        }
        assert!(allowed("MIT AND").is_err());
        assert!(allowed("(MIT").is_err());
    }
}
