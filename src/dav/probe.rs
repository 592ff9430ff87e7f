//! Probes of what a server really does with an upload, where its answers are not enough:
//! some accept a chunked PUT with 201 and store nothing, and RFC 9110 lets a server treat a
//! PUT with `Content-Range` as the whole new content. Each probe writes scratch files named
//! by the caller, checks what the server kept, and deletes them. The core decides its upload
//! strategy from these; `davdrive doctor` reports them.

use bytes::Bytes;
use serde::Serialize;

use super::client::{DavClient, Depth, Preconditions, PutBody};
use super::href::DavPath;

/// What a chunked PUT (no `Content-Length`) left on the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", content = "detail", rename_all = "kebab-case")]
pub enum ChunkedPut {
    /// Stored exactly.
    Stored,
    /// Accepted, but the server keeps another length (`None`: it lists no length).
    Lost { stored: Option<u64> },
    /// Refused: the server's answer.
    Refused(String),
    /// Could not tell (no answer, or the file was gone at once, as in a drop box).
    Undecided(String),
}

/// Streams a small body without a length to `dir/name`, reads its length back, deletes it.
pub async fn chunked_put(client: &DavClient, dir: &DavPath, name: &str) -> ChunkedPut {
    let (verdict, left) = chunked_put_leaving(client, dir, name).await;
    if let Some(probe) = left {
        let _ = client
            .delete(&probe, false, &Preconditions::default())
            .await;
    }
    verdict
}

/// [`chunked_put`] without the clean-up: also returns the file it left on the server (if
/// any), for the caller to delete (a mount does it in the background, off the path of the
/// first file created).
pub async fn chunked_put_leaving(
    client: &DavClient,
    dir: &DavPath,
    name: &str,
) -> (ChunkedPut, Option<DavPath>) {
    const PIECE: &[u8] = b"davdrive chunked upload probe\n";
    let probe = match dir.join(name) {
        Ok(p) => p,
        Err(e) => return (ChunkedPut::Undecided(e.to_string()), None),
    };
    let chunks: Vec<Result<Bytes, std::io::Error>> =
        (0..3).map(|_| Ok(Bytes::from_static(PIECE))).collect();
    let put = client
        .put(
            &probe,
            PutBody::Stream {
                stream: Box::new(futures_util::stream::iter(chunks)),
                len: None,
            },
            &Preconditions::default(),
        )
        .await;
    if let Err(e) = put {
        let verdict = if e.answered() {
            ChunkedPut::Refused(e.to_string())
        } else {
            ChunkedPut::Undecided(e.to_string())
        };
        return (verdict, None);
    }
    let verdict = match client.propfind(&probe, Depth::Zero, false).await {
        Ok(ms) => match ms.get(&probe) {
            Some(r) if r.content_length == Some(3 * PIECE.len() as u64) => ChunkedPut::Stored,
            Some(r) => ChunkedPut::Lost {
                stored: r.content_length,
            },
            None => ChunkedPut::Undecided("the listing does not name the file".into()),
        },
        Err(e) => ChunkedPut::Undecided(e.to_string()),
    };
    (verdict, Some(probe))
}

/// What a PUT with `Content-Range` into an existing file did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", content = "detail", rename_all = "kebab-case")]
pub enum PartialPut {
    /// Stored in place, and the file then moves with `Overwrite: F`: uploads may go in
    /// resumable segments to a temporary name.
    Applied,
    /// Stored in place, but the create-only MOVE that finishes a segmented upload fails.
    AppliedMoveFails(String),
    /// Refused: the server's answer.
    Refused(String),
    /// Accepted, but the file is not the two pieces: the server took the piece as the whole
    /// file (as RFC 9110 allows), or kept something else. Never to be used.
    Mangled { stored: u64 },
    /// Could not tell.
    Undecided(String),
}

impl PartialPut {
    /// `Some(whether uploads may use partial PUTs)`, or `None` to try again later.
    pub fn usable(&self) -> Option<bool> {
        match self {
            PartialPut::Applied => Some(true),
            PartialPut::Undecided(_) => None,
            _ => Some(false),
        }
    }
}

/// Writes `dir/first`, appends to it with a partial PUT, reads it back, moves it onto
/// `dir/moved` with `Overwrite: F`, deletes both.
pub async fn partial_put(
    client: &DavClient,
    dir: &DavPath,
    first: &str,
    moved: &str,
) -> PartialPut {
    const A: &[u8] = b"davdrive segment probe, first piece\n";
    const B: &[u8] = b"davdrive segment probe, second piece\n";
    let (first, moved) = match (dir.join(first), dir.join(moved)) {
        (Ok(f), Ok(m)) => (f, m),
        (Err(e), _) | (_, Err(e)) => return PartialPut::Undecided(e.to_string()),
    };
    let none = Preconditions::default();
    if let Err(e) = client
        .put(&first, PutBody::Bytes(Bytes::from_static(A)), &none)
        .await
    {
        return PartialPut::Undecided(format!("the first piece: {e}"));
    }
    let piece: Vec<Result<Bytes, std::io::Error>> = vec![Ok(Bytes::from_static(B))];
    let verdict = match client
        .put_range(
            &first,
            A.len() as u64,
            B.len() as u64,
            Box::new(futures_util::stream::iter(piece)),
        )
        .await
    {
        Err(e) if e.answered() => PartialPut::Refused(e.to_string()),
        Err(e) => PartialPut::Undecided(e.to_string()),
        Ok(_) => match client.get_bytes(&first).await {
            Ok(got) if got.len() == A.len() + B.len() && got.starts_with(A) && got.ends_with(B) => {
                let create_only = Preconditions {
                    if_none_match_any: true,
                    ..Default::default()
                };
                match client.move_onto(&first, &moved, &create_only).await {
                    Ok(()) => PartialPut::Applied,
                    Err(e) if e.answered() => PartialPut::AppliedMoveFails(e.to_string()),
                    Err(e) => PartialPut::Undecided(e.to_string()),
                }
            }
            Ok(got) => PartialPut::Mangled {
                stored: got.len() as u64,
            },
            // Gone at once (a drop box that ingests files) or refused: not for segments.
            Err(e) if e.answered() => PartialPut::Refused(format!("reading it back: {e}")),
            Err(e) => PartialPut::Undecided(e.to_string()),
        },
    };
    for p in [&first, &moved] {
        let _ = client.delete(p, false, &none).await;
    }
    verdict
}
