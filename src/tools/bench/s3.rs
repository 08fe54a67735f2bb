//! The S3 system's set-up on the benchmark's cluster: its key and buckets
//! through the `garage` command line.

use super::*;

/// The benchmark's S3 key name.
pub(super) const KEY_NAME: &str = "bench-key";

/// The benchmark's S3 key on `cluster` (created unless it exists).
pub(super) fn s3_key(cluster: &Cluster) -> anyhow::Result<S3Access> {
    let out = match cluster.garage_cli(0, &["key", "info", "--show-secret", KEY_NAME]) {
        Ok(out) => out,
        Err(_) => cluster.garage_cli(0, &["key", "create", KEY_NAME])?,
    };
    let (key_id, secret) = parse_key_output(&out)
        .with_context(|| format!("cannot read the key from `garage key create`:\n{out}"))?;
    Ok(S3Access {
        endpoint: format!("http://{}", cluster.nodes[0].s3),
        key_id,
        secret,
    })
}

/// Creates a bucket (unless it exists) and lets the benchmark's key use it.
pub(super) fn s3_bucket(cluster: &Cluster, bucket: &str) -> anyhow::Result<()> {
    if cluster.garage_cli(0, &["bucket", "info", bucket]).is_err() {
        cluster.garage_cli(0, &["bucket", "create", bucket])?;
    }
    cluster.garage_cli(
        0,
        &[
            "bucket", "allow", "--read", "--write", "--owner", bucket, "--key", KEY_NAME,
        ],
    )?;
    Ok(())
}

/// Parses the key id and secret out of `garage key create` / `key info
/// --show-secret`.
pub(super) fn parse_key_output(out: &str) -> Option<(String, String)> {
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    Some((field("Key ID:")?, field("Secret key:")?))
}
