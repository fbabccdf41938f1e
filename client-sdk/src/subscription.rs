//! Subscriptions as streams, with bounded buffers and explicit lag.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use futures_util::Stream;
use plexus_protocol::RawValue;
use plexus_protocol::methods::Member;
use tokio::sync::mpsc;

use crate::core::Command;
use crate::deliver::{Dropped, Reaper, lock};

/// An event published on a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    /// The topic it was published on.
    pub topic: Arc<str>,
    /// The payload, exactly as published (decode it with
    /// [`RawValue::decode`]).
    pub data: RawValue,
    /// The publishing user.
    pub from: Option<Arc<str>>,
}

/// What a [`Subscription`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An event published on a matching topic.
    Message(Publication),
    /// A member joined the topic's presence, or changed its info (presence
    /// subscriptions only).
    Join(Member),
    /// A member left the topic's presence (presence subscriptions only).
    Leave(Member),
    /// The subscriber fell behind: this many items were dropped here
    /// because its buffer was full.
    Lagged(u64),
    /// The subscription ended: the hub refused it when it was renewed after
    /// a reconnect, or the client closed. Nothing follows.
    ///
    /// The error says why: [`Error::Remote`](crate::Error::Remote) for a
    /// refused renewal, [`Error::Closed`](crate::Error::Closed) after
    /// `close` or a close by the hub after which the SDK does not
    /// reconnect, [`Error::Auth`](crate::Error::Auth) or
    /// [`Error::TokenProvider`](crate::Error::TokenProvider) when a
    /// reconnect could not authenticate.
    Ended(crate::Error),
}

#[derive(Debug, Default)]
struct Inner {
    items: VecDeque<Event>,
    lagged: u64,
    waker: Option<Waker>,
    ended: bool,
}

/// The bounded buffer between the connection task and one subscription.
#[derive(Debug)]
pub(crate) struct SubQueue {
    inner: std::sync::Mutex<Inner>,
    capacity: usize,
}

impl SubQueue {
    pub(crate) fn new(capacity: usize) -> SubQueue {
        SubQueue {
            inner: std::sync::Mutex::new(Inner::default()),
            capacity: capacity.max(1),
        }
    }

    /// Queues an item, or counts it as lagged when the buffer is full.
    pub(crate) fn push(&self, item: Event) {
        let mut inner = lock(&self.inner);
        if inner.ended {
            return;
        }
        if inner.items.len() >= self.capacity {
            inner.lagged += 1;
        } else {
            if inner.lagged > 0 {
                let n = std::mem::take(&mut inner.lagged);
                inner.items.push_back(Event::Lagged(n));
            }
            inner.items.push_back(item);
        }
        if let Some(w) = inner.waker.take() {
            w.wake();
        }
    }

    /// Ends the stream after what is queued, with a final `Ended` item.
    pub(crate) fn end(&self, why: crate::Error) {
        let mut inner = lock(&self.inner);
        if inner.ended {
            return;
        }
        if inner.lagged > 0 {
            let n = std::mem::take(&mut inner.lagged);
            inner.items.push_back(Event::Lagged(n));
        }
        inner.items.push_back(Event::Ended(why));
        inner.ended = true;
        if let Some(w) = inner.waker.take() {
            w.wake();
        }
    }

    /// How many items are buffered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        lock(&self.inner).items.len()
    }

    fn poll(&self, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        let mut inner = lock(&self.inner);
        if let Some(item) = inner.items.pop_front() {
            return Poll::Ready(Some(item));
        }
        if inner.lagged > 0 {
            return Poll::Ready(Some(Event::Lagged(std::mem::take(&mut inner.lagged))));
        }
        if inner.ended {
            return Poll::Ready(None);
        }
        inner.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// A subscription to a topic or pattern: a [`Stream`] of [`Event`]s.
///
/// Dropping it unsubscribes (in the background). Its buffer is bounded
/// (see [`ClientBuilder::subscription_buffer`](crate::ClientBuilder::subscription_buffer));
/// a consumer that falls behind gets [`Event::Lagged`] with the number of
/// items it missed, never unbounded memory and never silent loss.
///
/// `Lagged` appears where the gap is: the items before it arrived before
/// the loss, those after it arrived after. Events published while the
/// client was disconnected are not delivered and not reported. The
/// subscription survives reconnects; it keeps the client's connection
/// alive while it exists.
///
/// ```no_run
/// # async fn run(client: plexus_client::Client) -> Result<(), plexus_client::Error> {
/// use futures_util::StreamExt;
/// use plexus_client::Event;
/// let mut sub = client.subscribe("demo.>").await?;
/// while let Some(event) = sub.next().await {
///     match event {
///         Event::Message(m) => println!("{} from {:?}", m.topic, m.from),
///         Event::Lagged(n) => eprintln!("{n} events dropped here"),
///         Event::Ended(e) => eprintln!("ended: {e}"),
///         Event::Join(_) | Event::Leave(_) => {}
///     }
/// }
/// # Ok(()) }
/// ```
pub struct Subscription {
    pub(crate) id: u64,
    pub(crate) pattern: String,
    pub(crate) queue: Arc<SubQueue>,
    pub(crate) reaper: Arc<Reaper>,
    /// Keeps the connection alive while the subscription exists.
    pub(crate) _cmd: mpsc::Sender<Command>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.id)
            .field("pattern", &self.pattern)
            .finish_non_exhaustive()
    }
}

impl Subscription {
    /// The topic or pattern subscribed to.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }
}

impl Stream for Subscription {
    type Item = Event;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.queue.poll(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.reaper.push(Dropped::Subscription(self.id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn msg(i: u8) -> Event {
        Event::Message(Publication {
            topic: "t".into(),
            data: RawValue::encode(&i).unwrap(),
            from: None,
        })
    }

    #[tokio::test]
    async fn overflow_becomes_one_lagged_item_at_the_gap() {
        let q = Arc::new(SubQueue::new(2));
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        let mut sub = Subscription {
            id: 1,
            pattern: "t".into(),
            queue: q.clone(),
            reaper: Arc::new(Reaper::default()),
            _cmd: tx,
        };
        for i in 0..5 {
            q.push(msg(i));
        }
        assert_eq!(sub.next().await, Some(msg(0)));
        assert_eq!(sub.next().await, Some(msg(1)));
        q.push(msg(5));
        assert_eq!(sub.next().await, Some(Event::Lagged(3)));
        assert_eq!(sub.next().await, Some(msg(5)));
        q.push(msg(6));
        q.push(msg(7));
        q.push(msg(8));
        q.end(crate::Error::Closed(None));
        assert_eq!(sub.next().await, Some(msg(6)));
        assert_eq!(sub.next().await, Some(msg(7)));
        assert_eq!(sub.next().await, Some(Event::Lagged(1)));
        assert!(matches!(sub.next().await, Some(Event::Ended(_))));
        assert_eq!(sub.next().await, None);
    }
}
