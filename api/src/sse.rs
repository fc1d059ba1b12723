//! Server-sent event responses, one way for every route that streams
//! (`/queue/inProgress`, `/events/stream/{type}`): `data:` frames as the
//! source yields them, a comment after 15 s of quiet so proxies keep the
//! line open, and an end when the server stops (a stream never holds a
//! shutdown open).

use std::convert::Infallible;
use std::pin::Pin;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures_util::{Stream, StreamExt};

use crate::Lifecycle;

/// How long a stream stays quiet before it says it is alive.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// One `data:` frame.
pub(crate) fn frame(data: impl std::fmt::Display) -> Bytes {
    Bytes::from(format!("data: {data}\n\n"))
}

/// A `text/event-stream` response of `frames`; it ends when they do or
/// when the server starts stopping.
pub(crate) fn response(
    lifecycle: &Lifecycle,
    frames: impl Stream<Item = Bytes> + Send + 'static,
) -> Response {
    let frames: Pin<Box<dyn Stream<Item = Bytes> + Send>> = Box::pin(frames);
    let body = futures_util::stream::unfold(
        (frames, lifecycle.clone()),
        |(mut frames, lifecycle)| async move {
            let next = tokio::select! {
                () = lifecycle.stopping() => None,
                next = tokio::time::timeout(KEEP_ALIVE, frames.next()) => match next {
                    Err(_) => Some(Bytes::from_static(b": keep-alive\n\n")),
                    Ok(frame) => frame,
                },
            };
            next.map(|b| (Ok::<_, Infallible>(b), (frames, lifecycle)))
        },
    );
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}
