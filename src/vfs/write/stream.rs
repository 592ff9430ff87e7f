//! The streaming body of a write session: one PUT whose body is fed as the application
//! writes (chunked transfer encoding), its task, and how a streaming upload is abandoned
//! without leaving a half file on the server.

use super::*;

/// Chunks in flight between the writer and the HTTP body. With 1 MiB FUSE writes this keeps
/// at most ~16 MiB in memory per upload.
pub(super) const CHANNEL_DEPTH: usize = 16;

pub(super) type Chunk = Result<Bytes, io::Error>;

pub(super) struct Streaming {
    pub(super) tx: mpsc::Sender<Chunk>,
    pub(super) task: UploadTask,
    pub(super) journal: JournalWriter,
    /// Set only by [`Streaming::complete`] and [`Streaming::complete_journaled`]: our body
    /// stream ends only when we say so; a
    /// dropped sender alone never ends it. Abandoning is [`abort_stream`]'s job, which also
    /// checks whether the server stored the upload anyway.
    pub(super) complete: Arc<std::sync::atomic::AtomicBool>,
    /// Set by [`abort_stream`]: the body yields nothing more, not even what is queued.
    pub(super) abandoned: Arc<std::sync::atomic::AtomicBool>,
    /// Where the upload goes, and the client to clean up with (see [`abort_stream`]).
    pub(super) client: DavClient,
    pub(super) path: DavPath,
}

impl Streaming {
    /// Ends the body (the server completes the file once it has everything sent), leaving
    /// the journal and the request.
    fn end_body(self) -> (JournalWriter, UploadTask) {
        let Streaming {
            tx,
            task,
            journal,
            complete,
            ..
        } = self;
        complete.store(true, std::sync::atomic::Ordering::SeqCst);
        drop(tx);
        (journal, task)
    }

    /// Ends the body: the server completes the file. Returns the upload's outcome.
    pub(super) async fn complete(
        self,
    ) -> Result<Result<ResponseMeta, DavError>, tokio::task::JoinError> {
        self.end_body().1.await
    }

    /// Ends the body, and waits for both the server's answer and the journal's last writes:
    /// the body comes from memory, not from the journal, so the server may complete the file
    /// while the journal is still being written (a small file's close no longer waits for
    /// its journal before the last chunk goes). Returns the journal's outcome and the
    /// upload's.
    pub(super) async fn complete_journaled(
        self,
    ) -> (
        Result<(), String>,
        Result<Result<ResponseMeta, DavError>, tokio::task::JoinError>,
    ) {
        let (journal, task) = self.end_body();
        tokio::join!(journal.barrier(), task)
    }
}

/// The task running a streaming PUT; aborted when dropped, so that a session that ends
/// without completing its upload never leaves a request behind.
pub(super) struct UploadTask(JoinHandle<Result<ResponseMeta, DavError>>);

impl UploadTask {
    pub(super) fn abort(&self) {
        self.0.abort();
    }

    /// The request ended (the server answered before the body did, or it failed).
    pub(super) fn is_finished(&self) -> bool {
        self.0.is_finished()
    }
}

impl std::future::Future for UploadTask {
    type Output = Result<Result<ResponseMeta, DavError>, tokio::task::JoinError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

impl Drop for UploadTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts a PUT whose body is fed through the returned sender.
pub(super) fn start_stream(
    client: &DavClient,
    path: &DavPath,
    pre: &Preconditions,
    file: &std::fs::File,
    progress: &super::Progress,
) -> io::Result<Streaming> {
    let journal = JournalWriter::start(file.try_clone()?, 0, None, None)?;
    let (tx, rx) = mpsc::channel::<Chunk>(CHANNEL_DEPTH);
    let complete = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let abandoned = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (done, gone) = (complete.clone(), abandoned.clone());
    let body = futures_util::stream::unfold((rx, done, gone), |(mut rx, done, gone)| async move {
        let item = rx.recv().await;
        if gone.load(std::sync::atomic::Ordering::SeqCst) {
            // Abandoned: never end the body, never fail it (see `abort_stream`).
            drop(rx);
            return std::future::pending().await;
        }
        match item {
            Some(item) => Some((item, (rx, done, gone))),
            None if done.load(std::sync::atomic::Ordering::SeqCst) => None,
            None => std::future::pending().await,
        }
    });
    let body = progress.counted(body, 0);
    let (owner, target) = (client.clone(), path.clone());
    let client = client.clone();
    let path = path.clone();
    let pre = pre.clone();
    let task = tokio::spawn(async move {
        client
            .put(
                &path,
                PutBody::Stream {
                    stream: Box::new(body),
                    len: None,
                },
                &pre,
            )
            .await
    });
    Ok(Streaming {
        tx,
        task: UploadTask(task),
        journal,
        complete,
        abandoned,
        client: owner,
        path: target,
    })
}

pub(super) fn client_stall() -> std::time::Duration {
    std::time::Duration::from_secs(60)
}

/// Abandons a streaming upload: the server must not keep what was sent so far. Returns
/// `true` when the server had stored it anyway and that version was deleted again.
///
/// The body is never ended and never failed: it yields nothing more, and the request is
/// dropped, which makes the HTTP library close the connection in the middle of the body.
/// Servers discard a body cut off like that (Apache answers 400 and keeps no file; servers
/// that write in place keep the part, see `adopt_partial`). A failed body is not used to
/// abandon: hyper, after a body error, can still write the final chunk when it next polls
/// the connection, and Apache then stored the truncated file. A PUT that had already
/// completed (the server answered before its body ended) is undone with a DELETE of exactly
/// the version it created (`If-Match` with its entity tag).
pub(super) async fn abort_stream(s: Streaming) -> bool {
    let Streaming {
        tx,
        mut task,
        abandoned,
        client,
        path,
        ..
    } = s;
    abandoned.store(true, std::sync::atomic::Ordering::SeqCst);
    drop(tx);
    // Already answered, or it ends at once now (an error): the outcome is known.
    let outcome = tokio::time::timeout(std::time::Duration::from_millis(50), &mut task).await;
    task.abort();
    let Ok(Ok(Ok(meta))) = outcome else {
        return false;
    };
    let Some(tag) = meta.etag else {
        tracing::error!(
            path = %path,
            "an abandoned upload was completed by the server, which gave no entity tag to \
             delete it safely: the file on the server is incomplete"
        );
        return false;
    };
    tracing::warn!(path = %path, "an abandoned upload was completed by the server; deleting it");
    delete_version(&client, &path, &tag).await
}

/// Deletes exactly the version of `path` with entity tag `tag` (`If-Match`), an incomplete
/// upload of ours. Returns whether it is gone.
///
/// If-Match compares strongly. Apache marks the tag of a file changed within the last second
/// as weak and the same tag becomes strong a second later: wait that second out, then name
/// the version by its strong tag (no other version can carry it).
pub(crate) async fn delete_version(client: &DavClient, path: &DavPath, tag: &str) -> bool {
    let tag = match tag.strip_prefix("W/") {
        Some(strong) => {
            tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
            strong.to_owned()
        }
        None => tag.to_owned(),
    };
    let pre = Preconditions {
        if_match: Some(tag),
        ..Default::default()
    };
    match client.delete(path, false, &pre).await {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(path = %path, "cannot delete an incomplete upload: {e}");
            false
        }
    }
}
