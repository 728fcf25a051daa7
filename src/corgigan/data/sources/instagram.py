"""Instagram source: the images of hashtag posts, fetched with instaloader into a resumable cache.

A run logs in with an instaloader session file (its path in the environment variable named by
``instagram.session_env``; never in params.yaml or git), walks each hashtag's recent posts and downloads
every image into ``cache_dir``. Everything is resumable:

- after each post the hashtag's NodeIterator is frozen into ``hashtags/<tag>.json`` (atomically); the
  next run thaws it. A thawed iterator yields the last post again, so storing a post is idempotent;
- each image is written atomically with a small JSON of its metadata beside it, and a post record is
  written once all its images are in; nothing in the cache is downloaded twice;
- ``hashtags/<tag>.posts`` lists the posts taken from the hashtag, in listing order (append-only).

Rate limits never turn into hour-long sleeps: a wait longer than ``max_wait_s`` stops the run with a
message, and the next run resumes. `InstagramSource.items` yields the cached images of the first
``max_posts`` posts of every hashtag, sorted by source_id, whatever order they were downloaded in.
Videos (and the video slides of sidecars) are skipped; a sidecar gives one item per image, and every
image's source_id is ``f"{shortcode}_{index}"`` (index 0 for single-image posts).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import pickle
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests
from instaloader import (
    AbortDownloadException,
    ConnectionException,
    FrozenNodeIterator,
    Hashtag,
    InstaloaderContext,
    InstaloaderException,
    InvalidArgumentException,
    LoginRequiredException,
    NodeIterator,
    Post,
    QueryReturnedNotFoundException,
    RateController,
    TooManyRequestsException,
)
from tqdm import tqdm

from corgigan.data.sources import SourceItem
from corgigan.errors import StageError
from corgigan.params import InstagramParams
from corgigan.tables import atomic_path, write_json

log = logging.getLogger(__name__)

API_ATTEMPTS = 3                # instaloader's own tries per API query (dropped connections, 5xx, 429)
DOWNLOAD_ATTEMPTS = 4           # tries per image download
REQUEST_TIMEOUT_S = 60.0        # per HTTP request
RETRY_PAUSE_S = 2.0             # pause after a dropped download; doubles with each try
DEFAULT_429_WAIT_S = 60.0       # wait after an image 429 without Retry-After; doubles with each try
FATAL_STATUS = [401, 403]       # API answers that mean the session is no longer accepted

_HASHTAG = re.compile(r"^\w+$")

ContextFactory = Callable[..., InstaloaderContext]
PostIterator = Callable[[InstaloaderContext, str], NodeIterator[Post]]


_RESUME = "run `dvc repro` again to resume; nothing downloaded is lost"


def session_help(env_name: str) -> str:
    """How to create a session file and hand it to corgigan."""
    return (f"Create a session file with `instaloader --login YOUR_USERNAME` (it asks for the password "
            f"and saves the session to ~/.config/instaloader/session-YOUR_USERNAME), then "
            f"`export {env_name}=~/.config/instaloader/session-YOUR_USERNAME` and run again. "
            f"The session file stays out of params.yaml and git.")


def _session_refused(env_name: str, detail: str) -> str:
    return (f"Instagram no longer accepts the login session ({detail}): it has expired, or Instagram "
            f"wants a checkpoint. Open instagram.com in a browser and clear any checkpoint, refresh the "
            f"session file with `instaloader --login YOUR_USERNAME` (the file {env_name} points at), then "
            f"{_RESUME}.")


class RateLimitStop(AbortDownloadException):
    """A rate-limit wait longer than the allowed maximum.

    An AbortDownloadException, so instaloader's retry loops let it through instead of retrying.
    """

    def __init__(self, wait_s: float, max_wait_s: float) -> None:
        super().__init__(
            f"Instagram rate limit: waited up to {max_wait_s:g} s; run `dvc repro` again later to resume; "
            f"nothing downloaded is lost (Instagram asked for a wait of {wait_s:.0f} s, longer than "
            f"scrape.instagram.max_wait_s)")
        self.wait_s = wait_s
        self.max_wait_s = max_wait_s


class CappedRateController(RateController):
    """instaloader's rate controller whose waits never exceed `max_wait_s`.

    The default controller sleeps about half an hour per 429; here a longer wait raises RateLimitStop.
    """

    def __init__(self, context: InstaloaderContext, max_wait_s: float,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        super().__init__(context)
        self.max_wait_s = max_wait_s
        self._sleep = sleep

    def sleep(self, secs: float) -> None:
        """Wait `secs` seconds, or raise RateLimitStop when that is longer than allowed."""
        if secs > self.max_wait_s:
            raise RateLimitStop(secs, self.max_wait_s)
        if secs > 0:
            self._sleep(secs)


# A session file holds a few dozen short cookies; anything much bigger is not one.
MAX_SESSION_BYTES = 1 << 20


class _CookieUnpickler(pickle.Unpickler):
    """Unpickles only built-in containers and strings: a pickle that names any class or function is refused.

    instaloader writes a session as ``pickle.dump(requests.utils.dict_from_cookiejar(cookies))``: a plain
    dict of cookie name -> value, which needs no global. Every way a pickle runs code goes through a
    global (REDUCE, NEWOBJ, INST and BUILD act on something found by find_class; the copyreg extension
    codes resolve through it too), so refusing all of them means reading the file runs nothing from it.
    """

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"it names {module}.{name}, and a session file names no class or "
                                     f"function (reading it would run code)")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("it refers to persistent objects, which a session file never does")


def read_session_file(path: Path) -> dict[str, str]:
    """The cookies of an instaloader session file, read without running anything from the file.

    Raises pickle.UnpicklingError (or ValueError / EOFError) when the file is not a pickled dict of
    string cookies. A cookie without a value (None in the cookie jar) is dropped.
    """
    data = path.read_bytes()
    if len(data) > MAX_SESSION_BYTES:
        raise ValueError(f"{len(data)} bytes, far more than a session's cookies")
    cookies = _CookieUnpickler(io.BytesIO(data)).load()
    if not isinstance(cookies, dict):
        raise ValueError(f"it holds a {type(cookies).__name__}, not a dict of cookies")
    bad = [k for k, v in cookies.items() if not isinstance(k, str) or not isinstance(v, str | None)]
    if bad:
        raise ValueError(f"cookie {bad[0]!r} is not a name with a string value")
    return {k: v for k, v in cookies.items() if v is not None}


def load_session(env_name: str, environ: Mapping[str, str]) -> tuple[str, dict[str, str]]:
    """Read the instaloader session file named by `environ[env_name]`.

    Returns (user id, cookies). Raises StageError saying how to create one when it is missing or holds
    no login.
    """
    value = environ.get(env_name, "").strip()
    if not value:
        raise StageError(f"No Instagram session: the environment variable {env_name} is not set. "
                         + session_help(env_name))
    path = Path(value).expanduser()
    if not path.is_file():
        raise StageError(f"Instagram session file {path} (from {env_name}) does not exist. "
                         + session_help(env_name))
    try:
        cookies = read_session_file(path)
    except (OSError, ValueError, pickle.UnpicklingError, EOFError) as err:
        # Whatever the reason (not a pickle, a pickle of something else, a payload), it is not a session.
        raise StageError(f"{path} (from {env_name}) is not an instaloader session file ({err}). "
                         + session_help(env_name)) from err
    if "csrftoken" not in cookies:
        raise StageError(f"{path} (from {env_name}) is not an instaloader session file (no csrftoken "
                         f"cookie). " + session_help(env_name))
    if not cookies.get("sessionid"):
        raise StageError(f"{path} (from {env_name}) holds no login (empty sessionid); Instagram shows "
                         f"hashtags only to logged-in users. " + session_help(env_name))
    # The user id names the login in frozen iterators (instaloader refuses to thaw another user's).
    return str(cookies.get("ds_user_id") or "unknown"), cookies


def hashtag_posts(context: InstaloaderContext, tag: str) -> NodeIterator[Post]:
    """The resumable iterator over a hashtag's recent posts (queries the first page)."""
    return Hashtag(context, {"name": tag}).get_posts_resumable()


def _key(text: str) -> str:
    # Shortcodes are case-sensitive; hashing keeps file names apart on case-insensitive disks.
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _caused_by(err: BaseException, kind: type[BaseException]) -> bool:
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@contextlib.contextmanager
def instagram_errors(tag: str, env_name: str) -> Iterator[None]:
    """Turn instaloader's exceptions into StageErrors that say what to do."""
    try:
        yield
    except RateLimitStop as err:
        raise StageError(str(err)) from err
    except AbortDownloadException as err:
        raise StageError(_session_refused(env_name, str(err))) from err
    except LoginRequiredException as err:
        raise StageError(f"Instagram wants a login to list #{tag} ({err}). "
                         + session_help(env_name)) from err
    except QueryReturnedNotFoundException as err:
        raise StageError(f"Instagram found no hashtag #{tag} ({err}); check scrape.instagram.hashtags.") \
            from err
    except ConnectionException as err:
        if _caused_by(err, TooManyRequestsException):
            raise StageError(f"Instagram rate limit: it kept answering 429 Too Many Requests for #{tag}; "
                             f"run `dvc repro` again later to resume; nothing downloaded is lost.") from err
        raise StageError(f"Querying Instagram for #{tag} failed after {API_ATTEMPTS} attempts ({err}). "
                         f"Check the network connection, then {_RESUME}.") from err
    except InstaloaderException as err:
        raise StageError(f"Querying Instagram for #{tag} failed ({err}); {_RESUME}.") from err


@dataclass(frozen=True)
class Media:
    """One slide of a post: its position, whether it is a video, and the image URL."""

    index: int
    is_video: bool
    url: str | None


def post_media(post: Post) -> list[Media]:
    """The slides of a post: one per sidecar child, or the post itself."""
    if post.typename == "GraphSidecar":
        return [Media(i, node.is_video, None if node.is_video else node.display_url)
                for i, node in enumerate(post.get_sidecar_nodes())]
    if post.is_video:
        return [Media(0, True, None)]
    return [Media(0, False, post.url)]


def post_metadata(post: Post) -> dict[str, Any]:
    """What every image of the post records: owner id, UTC timestamp (ISO 8601), likes."""
    # The owner's numeric id comes with the listing; the username would cost one query per post.
    return {
        "shortcode": post.shortcode,
        "owner": str(post.owner_id),
        "timestamp": post.date_utc.replace(tzinfo=UTC).isoformat(),
        "likes": int(post.likes),
    }


class Cache:
    """The on-disk cache of one Instagram source. Every file is written atomically."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _post_path(self, shortcode: str) -> Path:
        return self.root / "posts" / f"{_key(shortcode)}.json"

    def _image_paths(self, source_id: str) -> tuple[Path, Path]:
        key = _key(source_id)
        folder = self.root / "images" / key[:2]
        return folder / f"{key}.img", folder / f"{key}.json"

    def _hashtag_path(self, tag: str, suffix: str) -> Path:
        return self.root / "hashtags" / f"{tag}{suffix}"

    # posts
    def has_post(self, shortcode: str) -> bool:
        """Whether the post and all its images are stored."""
        return self._post_path(shortcode).is_file()

    def read_post(self, shortcode: str) -> dict[str, Any]:
        """The stored record of a post (its slides and what became of each)."""
        path = self._post_path(shortcode)
        if not path.is_file():
            raise StageError(f"The Instagram cache {self.root} lists post {shortcode} but has no record of "
                             f"it ({path}); delete {self.root} to rebuild the cache.")
        return json.loads(path.read_text())

    def write_post(self, record: dict[str, Any]) -> None:
        """Store a post record; written last, it marks the post complete."""
        write_json(record, self._post_path(record["shortcode"]))

    # images
    def has_image(self, source_id: str) -> bool:
        """Whether the image's bytes and metadata are stored."""
        data, meta = self._image_paths(source_id)
        return data.is_file() and meta.is_file()

    def write_image(self, source_id: str, data: bytes, meta: dict[str, Any]) -> None:
        """Store an image's bytes, then its metadata (the metadata marks it complete)."""
        data_path, meta_path = self._image_paths(source_id)
        with atomic_path(data_path) as tmp:
            tmp.write_bytes(data)
        write_json({**meta, "source_id": source_id}, meta_path)

    def read_image(self, source_id: str) -> tuple[bytes, dict[str, Any]]:
        """An image's bytes and metadata."""
        data_path, meta_path = self._image_paths(source_id)
        if not (data_path.is_file() and meta_path.is_file()):
            raise StageError(f"The Instagram cache {self.root} misses image {source_id} ({data_path}); "
                             f"delete {self.root} to rebuild the cache.")
        return data_path.read_bytes(), json.loads(meta_path.read_text())

    # hashtags
    def read_listing(self, tag: str) -> list[str]:
        """Shortcodes taken from the hashtag, in listing order; a torn last line is dropped."""
        path = self._hashtag_path(tag, ".posts")
        if not path.is_file():
            return []
        text = path.read_text()
        if text and not text.endswith("\n"):
            # A run stopped mid-append: drop the torn line so the next append starts cleanly.
            text = text[: text.rfind("\n") + 1]
            with atomic_path(path) as tmp:
                tmp.write_text(text)
        return text.splitlines()

    def append_listing(self, tag: str, shortcode: str) -> None:
        """Add a post to the hashtag's listing (append-only: one line per post)."""
        path = self._hashtag_path(tag, ".posts")
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(shortcode + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read_state(self, tag: str) -> dict[str, Any]:
        """{"exhausted": bool, "resume": frozen iterator as a dict or None}."""
        path = self._hashtag_path(tag, ".json")
        if not path.is_file():
            return {"exhausted": False, "resume": None}
        return json.loads(path.read_text())

    def write_state(self, tag: str, exhausted: bool, resume: dict[str, Any] | None) -> None:
        """Store where the hashtag's iteration stands."""
        write_json({"exhausted": exhausted, "resume": resume}, self._hashtag_path(tag, ".json"))


class InstagramSource:
    """Images of the recent posts of some hashtags, downloaded into a resumable cache.

    `context_factory` builds the InstaloaderContext from InstaloaderContext's keyword arguments, and
    `post_iterator` opens a hashtag's NodeIterator; both default to instaloader's own. `sleep` does every
    wait (rate limits and retry pauses); `environ` is where the session variable is looked up.
    """

    name = "instagram"

    def __init__(self, p: InstagramParams, cache_dir: Path, *,
                 context_factory: ContextFactory = InstaloaderContext,
                 post_iterator: PostIterator = hashtag_posts,
                 sleep: Callable[[float], None] = time.sleep,
                 environ: Mapping[str, str] = os.environ) -> None:
        self.p = p
        self.cache = Cache(Path(cache_dir))
        self.hashtags = list(dict.fromkeys(tag.lower() for tag in p.hashtags))
        for tag in self.hashtags:
            if not _HASHTAG.match(tag):
                raise StageError(f"scrape.instagram.hashtags: {tag!r} is not a hashtag name (letters, "
                                 f"digits and underscores, without '#').")
        self._context_factory = context_factory
        self._post_iterator = post_iterator
        self._sleep = sleep
        self._environ = environ
        self._context: InstaloaderContext | None = None
        self._controller: CappedRateController | None = None

    def items(self) -> Iterator[SourceItem]:
        """Download what is missing, then yield every image of the selected posts, sorted by source_id."""
        self.scrape()
        yield from self.cached_items()

    def scrape(self) -> None:
        """Bring the cache up to `max_posts` posts per hashtag (or the hashtag's end)."""
        for tag in self.hashtags:
            self._scrape_hashtag(tag)

    def cached_items(self) -> Iterator[SourceItem]:
        """The cached images of the first `max_posts` posts of each hashtag, sorted by source_id."""
        source_ids: set[str] = set()
        for tag in self.hashtags:
            for shortcode in self.cache.read_listing(tag)[: self.p.max_posts]:
                for media in self.cache.read_post(shortcode)["media"]:
                    if media["kind"] == "image":
                        source_ids.add(media["source_id"])
        for source_id in sorted(source_ids):
            data, meta = self.cache.read_image(source_id)
            yield SourceItem(source_id=source_id, data=data, url=meta["url"], owner=meta["owner"],
                             timestamp=datetime.fromisoformat(meta["timestamp"]), likes=meta["likes"])

    # network side
    def _open_context(self) -> InstaloaderContext:
        """Log in with the session file (only once some hashtag needs the network)."""
        if self._context is None:
            user, cookies = load_session(self.p.session_env, self._environ)

            def controller(ctx: InstaloaderContext) -> CappedRateController:
                self._controller = CappedRateController(ctx, self.p.max_wait_s, self._sleep)
                return self._controller

            context = self._context_factory(
                sleep=True, quiet=True, max_connection_attempts=API_ATTEMPTS,
                request_timeout=REQUEST_TIMEOUT_S, rate_controller=controller,
                fatal_status_codes=FATAL_STATUS,
                # The listing's display_url is 1080 px wide; the iPhone API's larger versions would cost
                # one more (heavily rate-limited) query per post.
                iphone_support=False)
            context.load_session(user, cookies)
            if not context.is_logged_in:
                raise StageError("The Instagram session did not log in. " + session_help(self.p.session_env))
            self._context = context
            log.info("Instagram: logged in with the session from $%s (user id %s)", self.p.session_env, user)
        return self._context

    def _open_iterator(self, context: InstaloaderContext, tag: str,
                       resume: dict[str, Any] | None) -> NodeIterator[Post]:
        iterator = self._post_iterator(context, tag)
        if resume is None:
            return iterator
        try:
            frozen = FrozenNodeIterator(**resume)
            if frozen.best_before and frozen.best_before < time.time():
                raise InvalidArgumentException("the resume information has expired")
            iterator.thaw(frozen)
        except (TypeError, InvalidArgumentException) as err:
            # Start from the newest post again; posts already taken are recognised and skipped.
            log.warning("#%s: not resuming the saved listing position (%s); listing from the start", tag, err)
            return iterator
        log.info("#%s: resuming after %d posts", tag, frozen.total_index)
        return iterator

    def _scrape_hashtag(self, tag: str) -> None:
        listing = self.cache.read_listing(tag)
        state = self.cache.read_state(tag)
        if state["exhausted"] or len(listing) >= self.p.max_posts:
            log.info("#%s: %d posts already cached", tag, min(len(listing), self.p.max_posts))
            return
        taken = set(listing)
        counts: Counter[str] = Counter()
        with instagram_errors(tag, self.p.session_env):
            context = self._open_context()
            iterator = self._open_iterator(context, tag, state["resume"])
            with tqdm(total=self.p.max_posts, initial=len(listing), desc=f"#{tag}", unit="post") as bar:
                exhausted = False
                while len(listing) < self.p.max_posts:
                    post = next(iterator, None)
                    if post is None:
                        exhausted = True
                        break
                    # A thawed iterator yields its last post again; a listing can also repeat a post.
                    if post.shortcode not in taken:
                        self._store_post(context, post, counts)
                        self.cache.append_listing(tag, post.shortcode)
                        listing.append(post.shortcode)
                        taken.add(post.shortcode)
                        bar.update(1)
                    self.cache.write_state(tag, False, iterator.freeze()._asdict())
                self.cache.write_state(tag, exhausted, None if exhausted else iterator.freeze()._asdict())
        log.info("#%s: %d posts taken%s; this run: %d images downloaded, %d already cached, "
                 "%d posts already stored, %d videos skipped, %d images gone (404), %d posts unreadable",
                 tag, len(listing), " (end of hashtag)" if exhausted else "", counts["downloaded"],
                 counts["cached"], counts["post_cached"], counts["video"], counts["gone"],
                 counts["unreadable"])

    def _store_post(self, context: InstaloaderContext, post: Post, counts: Counter[str]) -> None:
        """Download the post's images (those not cached yet), then write its record."""
        if self.cache.has_post(post.shortcode):
            counts["post_cached"] += 1       # reached before through another hashtag
            return
        try:
            meta = post_metadata(post)
            slides = post_media(post)
        except (KeyError, TypeError, ValueError) as err:
            # Instagram sent a post without the fields every post has: record it, keep going.
            log.warning("post %s: unreadable post data (%r); skipped", post.shortcode, err)
            counts["unreadable"] += 1
            self.cache.write_post({"shortcode": post.shortcode, "media": [], "error": repr(err)})
            return
        media = []
        for slide in slides:
            source_id = f"{post.shortcode}_{slide.index}"
            if slide.is_video:
                counts["video"] += 1
                media.append({"index": slide.index, "kind": "video", "source_id": source_id, "url": None})
                continue
            kind = self._store_image(context, source_id, slide.url, meta, counts)
            media.append({"index": slide.index, "kind": kind, "source_id": source_id, "url": slide.url})
        self.cache.write_post({**meta, "media": media})

    def _store_image(self, context: InstaloaderContext, source_id: str, url: str | None,
                     meta: dict[str, Any], counts: Counter[str]) -> str:
        if self.cache.has_image(source_id):
            counts["cached"] += 1
            return "image"
        data = self._download(context, url) if url else None
        if data is None:
            counts["gone"] += 1
            log.warning("%s: image no longer on Instagram (%s); skipped", source_id, url)
            return "gone"
        self.cache.write_image(source_id, data, {"url": url, "owner": meta["owner"],
                                                 "timestamp": meta["timestamp"], "likes": meta["likes"]})
        counts["downloaded"] += 1
        return "image"

    def _download(self, context: InstaloaderContext, url: str) -> bytes | None:
        """The image's bytes; None when it is gone (404/410). Retries 429s and dropped connections."""
        assert self._controller is not None
        problem = ""
        for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
            backoff = 2 ** (attempt - 1)
            try:
                with context.get_anonymous_session() as session:
                    resp = session.get(url)
                    status, data, headers = resp.status_code, resp.content, resp.headers
            except requests.RequestException as err:
                problem = f"connection failed: {err}"
                if attempt < DOWNLOAD_ATTEMPTS:
                    log.warning("download of %s failed (%s); retry %d of %d", url, problem, attempt,
                                DOWNLOAD_ATTEMPTS - 1)
                    self._sleep(RETRY_PAUSE_S * backoff)
                continue
            if status == 200:
                return data
            if status in (404, 410):
                return None
            if status in (401, 403):
                raise StageError(_session_refused(self.p.session_env, f"HTTP {status} for image {url}"))
            problem = f"HTTP {status}"
            if attempt < DOWNLOAD_ATTEMPTS:
                log.warning("download of %s answered %s; retry %d of %d", url, problem, attempt,
                            DOWNLOAD_ATTEMPTS - 1)
                if status == 429:
                    # Through the rate controller: a wait longer than max_wait_s stops the run.
                    wait = _retry_after(headers)
                    with instagram_errors("image downloads", self.p.session_env):
                        self._controller.sleep(DEFAULT_429_WAIT_S * backoff if wait is None else wait)
                else:
                    self._sleep(RETRY_PAUSE_S * backoff)
        if problem == "HTTP 429":
            raise StageError(f"Instagram rate limit: image downloads kept answering 429 Too Many Requests; "
                             f"run `dvc repro` again later to resume; nothing downloaded is lost ({url}).")
        raise StageError(f"Downloading {url} failed {DOWNLOAD_ATTEMPTS} times ({problem}). Check the "
                         f"network connection, then {_RESUME}.")


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """The Retry-After header in seconds, when it is a number."""
    value = headers.get("Retry-After", "").strip()
    try:
        return max(float(value), 0.0) if value else None
    except ValueError:
        return None
