//! What stands on the server after an upload of ours broke: the part a server that writes in
//! place kept (ours, to replace or delete), someone else's file, or a file still changing.

use super::*;

/// What stands on the server after an upload of ours broke (see `adopt_partial`).
pub(super) enum Partial {
    /// The part of our upload that arrived: its entity tag and length.
    Ours(Option<String>, u64),
    NotOurs(String),
    /// Changing as we look: the server is still writing it.
    Changing,
}

impl WriteHandle {
    /// Deletes the part of our given-up PUT that the server kept at `path` (see
    /// `look_at_partial`), if any; the session's preconditions then create the file anew.
    /// When it cannot be deleted (still changing, no usable tag, the DELETE failed), it is
    /// adopted instead, so that the next upload replaces it.
    pub(super) async fn remove_partial(&self, client: &DavClient, path: &DavPath, st: &mut State) {
        // Only where we know which version we expected: anything else is not provably ours.
        if !(st.pre.if_none_match_any || st.pre.if_match.is_some()) || st.is_local() {
            return;
        }
        match self.settled_partial(client, path, st).await {
            Partial::NotOurs(_) => return,
            Partial::Ours(Some(tag), len) if len > 0 => {
                tracing::debug!(path = %path, len, "deleting the part of a given-up upload");
                if delete_version(client, path, &tag).await {
                    st.adopted = false;
                    st.expect(Preconditions {
                        if_none_match_any: true,
                        ..Default::default()
                    });
                    return;
                }
            }
            Partial::Ours(..) | Partial::Changing => {}
        }
        self.adopt_partial(client, st).await;
    }

    /// `look_at_partial`, looked at again while the server is still writing the file (for
    /// at most about 3 s).
    pub(super) async fn settled_partial(
        &self,
        client: &DavClient,
        path: &DavPath,
        st: &State,
    ) -> Partial {
        let mut pause = std::time::Duration::from_millis(25);
        for _ in 0..7 {
            match self.look_at_partial(client, path, st).await {
                Partial::Changing => {
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                settled => return settled,
            }
        }
        Partial::Changing
    }

    /// A PUT of ours ended without success and the data will be sent again. Servers that
    /// write a PUT body in place (dav-server's LocalFs and others) then hold the part that
    /// arrived, as a new version, and the retry's preconditions would call our own part a
    /// conflict. When the file on the server is no longer the version we expected, is no
    /// longer than what we wrote, and its last bytes are ours, it is our part: the retry
    /// replaces exactly that version. Anything else stays a conflict.
    ///
    /// Such a server may still be writing the body it received when we look: a file that
    /// changes between two looks is looked at again, for at most about 3 s.
    pub(super) async fn adopt_partial(&self, client: &DavClient, st: &mut State) {
        let expects_version = st.pre.if_none_match_any || st.pre.if_match.is_some();
        if !expects_version || st.is_local() {
            return;
        }
        let path = self.path();
        // A weak tag is looked at once more, a second later.
        for _ in 0..2 {
            match self.settled_partial(client, &path, st).await {
                // An empty file proves nothing: anyone may have emptied it. Except where
                // it is exactly what our given-up PUT made: for a new file (in-place servers
                // create it before the first byte arrives; also a new file whose empty
                // placeholder we made at create and now expect by its tag), and for a PUT
                // that had sent nothing (an `O_TRUNC` open followed by `ftruncate`). Both
                // failed their next upload with 412 before, the data going to recovery
                // (found by the reference model).
                Partial::Ours(_, 0)
                    if !st.pre.if_none_match_any && !self.is_new_file() && st.size > 0 =>
                {
                    return;
                }
                Partial::Ours(Some(tag), _) if tag.starts_with("W/") => {
                    // A tag that is weak now (Apache: changed within the last second)
                    // becomes strong a second later; look again then.
                    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
                }
                Partial::Ours(etag, _) => {
                    if etag.is_none() && !st.pre.if_none_match_any {
                        // An overwrite must stay conditional: without a tag to name our part
                        // by, the conflict stands.
                        tracing::debug!(path = %path, "our part has no entity tag; not adopting it");
                        return;
                    }
                    tracing::debug!(path = %path, "the server kept part of our upload; replacing it");
                    st.adopted = true;
                    st.expect(Preconditions {
                        if_match: etag,
                        ..Default::default()
                    });
                    return;
                }
                Partial::NotOurs(why) => {
                    tracing::debug!(path = %path, "no partial upload to adopt: {why}");
                    return;
                }
                Partial::Changing => {
                    tracing::debug!(path = %path, "the file on the server keeps changing; not adopting it");
                    return;
                }
            }
        }
    }

    pub(super) async fn look_at_partial(
        &self,
        client: &DavClient,
        path: &DavPath,
        st: &State,
    ) -> Partial {
        let meta = match client.head(path).await {
            Ok(m) => m,
            // Gone or unreachable: the preconditions stand.
            Err(e) => return Partial::NotOurs(e.to_string()),
        };
        let strong = |t: &str| t.trim_start_matches("W/").to_owned();
        if let (Some(have), Some(want)) = (&meta.etag, &st.pre.if_match)
            && strong(have) == strong(want)
        {
            return Partial::NotOurs("still the version we expected".into());
        }
        let Some(len) = meta.content_length.filter(|&n| n <= st.size) else {
            return Partial::NotOurs(format!("{:?} bytes, more than ours", meta.content_length));
        };
        let tail = len.saturating_sub(64 * 1024);
        let mut ours = vec![0u8; (len - tail) as usize];
        match read_at(&st.file, &mut ours, tail) {
            Ok(n) if n == ours.len() => {}
            _ => return Partial::NotOurs("our copy cannot be read".into()),
        }
        let mut theirs = Vec::with_capacity(ours.len());
        if len > 0 {
            let range = ByteRange {
                start: tail,
                end: Some(len - 1),
            };
            let mut get = match client.get(path, Some(range), meta.etag.as_deref()).await {
                Ok(g) => g,
                Err(e) => return Partial::NotOurs(e.to_string()),
            };
            if get.range.is_none() || get.meta.etag != meta.etag {
                return Partial::Changing;
            }
            loop {
                match get.chunk().await {
                    Ok(Some(c)) => theirs.extend_from_slice(&c),
                    Ok(None) => break,
                    Err(_) => return Partial::Changing,
                }
            }
        }
        if theirs != ours {
            return Partial::NotOurs("other bytes".into());
        }
        // Still the same version after we read it?
        match client.head(path).await {
            Ok(again) if again.etag == meta.etag && again.content_length == meta.content_length => {
                Partial::Ours(meta.etag, len)
            }
            Ok(_) => Partial::Changing,
            Err(e) => Partial::NotOurs(e.to_string()),
        }
    }
}
