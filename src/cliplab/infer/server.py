"""HTTP service over an embedding store: search by text or image, zero-shot classify, embed, thumbnails.

Built with FastAPI; :func:`create_app` returns the app (no global state), ``cliplab serve`` runs it with
uvicorn. Every user mistake is a 4xx with a JSON body ``{"error": "..."}``; only indexed files are ever
served (by id, never by path).
"""

from __future__ import annotations

import io
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
from fastapi import FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from cliplab.errors import CliplabError

__all__ = ["ServeLimits", "create_app"]

STATIC = Path(__file__).parent / "static"


@dataclass(frozen=True)
class ServeLimits:
    max_k: int = 100
    max_query_chars: int = 500
    max_labels: int = 100
    max_texts: int = 256
    max_upload_bytes: int = 16 * 1024 * 1024
    max_image_pixels: int = 64_000_000  # uploads; an indexed image is read within the limit embed read it with
    thumbnail_size: int = 256


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Service:
    """The loaded model, store and index behind the endpoints."""

    def __init__(self, store_path: str | None, checkpoint: str | None, limits: ServeLimits, device: str) -> None:
        from cliplab.api import load

        self.limits = limits
        self.store = self.index = None
        if store_path is not None:
            from cliplab.infer.index import load_or_build_index
            from cliplab.infer.store import EmbeddingStore

            self.store = EmbeddingStore(store_path)
            checkpoint = self.store.query_model(checkpoint)  # before the index: a missing model is the first news
            self.index = load_or_build_index(self.store)
        if checkpoint is None:
            raise CliplabError("serve: give a STORE (whose manifest names its checkpoint) or --checkpoint")
        self.model, self.preprocess, self.tokenizer = load(checkpoint, device=device)
        if self.store is not None:
            self.store.check_model(self.model, str(checkpoint))
        self.checkpoint = str(checkpoint)
        self.metadata = self.store.metadata().to_pylist() if self.store is not None else []
        # ids are positions, the same in a rebuilt or another store: image URLs carry the store's version
        self.version = self.store.fingerprint() if self.store is not None else ""

    # -- helpers ------------------------------------------------------------------------------
    def pixels(self, data: bytes, name: str) -> torch.Tensor:
        """An upload decoded and preprocessed at once (3, S, S): however many files a request holds, one
        decoded image at a time is in memory."""
        from cliplab.transforms import ImageError, load_image

        if len(data) > self.limits.max_upload_bytes:
            raise ApiError(413, f"{name}: upload larger than {self.limits.max_upload_bytes} bytes")
        if not data:
            raise ApiError(400, f"{name}: empty upload")
        try:
            return self.preprocess(load_image(data, max_pixels=self.limits.max_image_pixels))
        except ImageError as err:
            raise ApiError(400, f"{name}: {err}") from None
        except (CliplabError, SyntaxError, OSError, ValueError) as err:  # Pillow's parsers raise SyntaxError too
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ApiError(400, f"{name}: unreadable image ({reason})") from None

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> np.ndarray:
        tokens = self.tokenizer(texts, truncate=True).to(next(self.model.parameters()).device)
        return self.model.encode_text(tokens, normalize=True).float().cpu().numpy()

    @torch.no_grad()
    def encode_images(self, uploads: list[tuple[bytes, str]]) -> np.ndarray:
        """(N, D) unit embeddings of uploaded files ``(bytes, name)``."""
        pixels = torch.stack([self.pixels(data, name) for data, name in uploads])  # (N, 3, S, S)
        return self.model.encode_image(pixels.to(next(self.model.parameters()).device), normalize=True
                                       ).float().cpu().numpy()

    def search(self, query: np.ndarray, k: int) -> list[dict[str, Any]]:
        if self.index is None:
            raise ApiError(404, "this server has no store to search (start it with a STORE)")
        scores, ids = self.index.search(query.astype(np.float32), k)
        results = []
        for score, i in zip(scores[0].tolist(), ids[0].tolist(), strict=True):
            if i < 0:
                continue
            meta = self.metadata[i]
            hit = {"id": int(i), "score": round(float(score), 6), "path": meta.get("path"),
                   "caption": meta.get("caption")}
            if meta.get("path") is not None:  # a store of texts has no images to show
                hit["url"] = f"/images/{int(i)}?v={self.version}"
            results.append(hit)
        return results

    def check_k(self, k: int) -> int:
        if not 1 <= k <= self.limits.max_k:
            raise ApiError(422, f"k must be between 1 and {self.limits.max_k}")
        return k


class _BodyLimit:
    """Refuses (413) a request body larger than ``max_bytes`` (plus 64 KiB for multipart headers) as it
    arrives, whether or not it announces its length: the count is taken on the body itself, so a chunked
    upload is stopped too."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.limit = app, max_bytes + 64 * 1024
        self.message = f"request larger than {max_bytes} bytes"

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and not length.isdigit():
            return await JSONResponse({"error": "Content-Length is not a number"}, status_code=400)(
                scope, receive, send)
        if length is not None and int(length) > self.limit:
            return await self._refuse(scope, receive, send)
        seen = 0

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:  # raised inside the route, turned into a 413 by the exception handlers
                raise HTTPException(413, self.message)
            return message

        await self.app(scope, counted, send)

    async def _refuse(self, scope: dict, receive: Any, send: Any) -> None:
        await JSONResponse({"error": self.message}, status_code=413)(scope, receive, send)


class _HostGuard:
    """Answers only requests whose Host header (without its port) is one of ``hosts``; others get a JSON 400."""

    def __init__(self, app: Any, hosts: list[str]) -> None:
        self.app, self.hosts = app, {h.lower() for h in hosts}

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket") and "*" not in self.hosts:  # "*": any host, as in Starlette
            value = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1").strip().lower()
            host = value[: value.find("]") + 1] if value.startswith("[") else value.rsplit(":", 1)[0]
            if host not in self.hosts:
                error = f"Host {value or '(none)'}: this server answers to {', '.join(sorted(self.hosts))} only"
                return await JSONResponse({"error": error}, status_code=400)(scope, receive, send)
        await self.app(scope, receive, send)


def _rgb_for_jpeg(img: Any) -> Any:
    """JPEG holds RGB or grey: transparency is composited on white, palettes and other modes converted."""
    from PIL import Image

    if img.mode in ("RGB", "L"):
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def _thumbnail(path: str, size: int, name: str) -> Any:
    """An indexed image shrunk to fit ``size`` x ``size``. Read within the pixel limit ``cliplab embed`` read it
    with, not the lower one of uploads: whatever was indexed can be shown. A JPEG file is decoded at a reduced
    scale (``thumbnail`` drafts an image not yet loaded): a 100-MP photo then takes a few MB, not 300."""
    from PIL import Image, ImageOps

    from cliplab.infer.embed import read_item_image
    from cliplab.transforms import MAX_PIXELS

    if os.path.isfile(path):  # else a shard member, SHARD.tar#MEMBER
        too_large = ApiError(404, f"{name}: image too large to show (over {MAX_PIXELS} pixels)")
        try:
            with warnings.catch_warnings(), Image.open(path) as img:
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limit is checked here
                if img.width * img.height > MAX_PIXELS:
                    raise too_large
                if img.format == "JPEG":
                    img.thumbnail((size, size))
                    return ImageOps.exif_transpose(img) or img
        except Image.DecompressionBombError:  # Pillow's own refusal, at the same limit
            raise too_large from None
    img = read_item_image(path, max_pixels=MAX_PIXELS)
    img.thumbnail((size, size))
    return img


def _labels(raw: str, limit: int) -> list[str]:
    """Labels as a JSON list, or separated by newlines or commas."""
    raw = raw.strip()
    try:
        labels = json.loads(raw) if raw.startswith("[") else None
    except json.JSONDecodeError:
        labels = None
    if not isinstance(labels, list):
        labels = raw.splitlines() if "\n" in raw else raw.split(",")
    if not all(isinstance(x, str) for x in labels):
        raise ApiError(422, "labels: a JSON list must hold strings")
    for position, label in enumerate(labels, 1):  # JSON's "\ud800" decodes, but cannot be echoed back as UTF-8
        try:
            label.encode("utf-8")
        except UnicodeEncodeError:
            raise ApiError(422, f"labels: label {position} is not valid Unicode (a lone surrogate)") from None
    labels = [x.strip() for x in labels if x.strip()]
    if not labels:
        raise ApiError(422, "give at least one label")
    if len(labels) > limit:
        raise ApiError(422, f"at most {limit} labels")
    return labels


def create_app(store: str | None = None, checkpoint: str | None = None, limits: ServeLimits | None = None,
               device: str = "cpu", allowed_hosts: list[str] | None = None) -> FastAPI:
    """The app; ``allowed_hosts`` (Host header values, without port) guards a loopback server against DNS
    rebinding: a web page on another domain then cannot read its answers."""
    limits = limits or ServeLimits()
    svc = _Service(store, checkpoint, limits, device)
    app = FastAPI(title="cliplab", description="Search, classify and embed with CLIP.", version="1")
    if allowed_hosts is not None:
        app.add_middleware(_HostGuard, hosts=allowed_hosts)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return JSONResponse({"error": f"{where}: {first.get('msg', 'invalid request')}"}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        """A bug answers JSON like every refusal (the client parses one shape); the traceback goes to the log."""
        return JSONResponse({"error": f"internal server error ({type(exc).__name__}); the server's log has the "
                                      "details"}, status_code=500)

    app.add_middleware(_BodyLimit, max_bytes=limits.max_upload_bytes)

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    def index_page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "items": len(svc.metadata), "checkpoint": svc.checkpoint}

    @app.get("/search")
    def search_text(q: Annotated[str, Query()], k: int = 10) -> dict[str, Any]:
        if not q.strip():
            raise ApiError(422, "q: the query is empty")
        if len(q) > limits.max_query_chars:
            raise ApiError(422, f"q: at most {limits.max_query_chars} characters")
        return {"query": q, "results": svc.search(svc.encode_text([q]), svc.check_k(k))}

    @app.post("/search")
    async def search_image(image: Annotated[UploadFile, File()], k: Annotated[int, Form()] = 10) -> dict[str, Any]:
        svc.check_k(k)
        upload = (await image.read(limits.max_upload_bytes + 1), image.filename or "image")
        query = await run_in_threadpool(svc.encode_images, [upload])  # decoding and encoding leave the loop free
        return {"query": image.filename, "results": svc.search(query, k)}

    @app.post("/classify")
    async def classify(
        image: Annotated[UploadFile, File()],
        labels: Annotated[str, Form()],
        template: Annotated[str, Form()] = "a photo of a {}.",
    ) -> dict[str, Any]:
        from cliplab.api import classify as zero_shot
        from cliplab.eval.prompts import check_template

        names = _labels(labels, limits.max_labels)
        if any(len(name) > limits.max_query_chars for name in names):
            raise ApiError(422, f"labels: at most {limits.max_query_chars} characters each")
        if len(template) > limits.max_query_chars:
            raise ApiError(422, f"template: at most {limits.max_query_chars} characters")
        try:
            check_template(template)
        except CliplabError as err:
            raise ApiError(422, str(err)) from None
        data = await image.read(limits.max_upload_bytes + 1)

        def predict() -> list[dict[str, Any]]:
            pixels = svc.pixels(data, image.filename or "image")  # (3, S, S)
            try:
                return zero_shot([pixels], names, svc.model, svc.preprocess, svc.tokenizer, templates=template)[0]
            except CliplabError as err:  # e.g. a prompt longer than the model's context
                raise ApiError(422, str(err)) from None

        return {"predictions": await run_in_threadpool(predict)}

    @app.post("/embed")
    async def embed(request: Request) -> dict[str, Any]:
        kind = request.headers.get("content-type", "")
        if kind.startswith("application/json"):
            raw = bytearray()
            async for chunk in request.stream():  # bounded however the body is sent (chunked or not)
                raw += chunk
                if len(raw) > limits.max_upload_bytes:
                    raise ApiError(413, f"request larger than {limits.max_upload_bytes} bytes")
            try:
                body = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
                raise ApiError(400, "body is not valid JSON (or nested too deeply)") from None
            texts = body.get("texts") if isinstance(body, dict) else None
            if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
                raise ApiError(422, 'texts: expected {"texts": ["...", ...]}')
            if len(texts) > limits.max_texts or any(len(t) > limits.max_query_chars for t in texts):
                raise ApiError(422, f"texts: at most {limits.max_texts} texts of {limits.max_query_chars} chars")
            return {"kind": "text", "embeddings": (await run_in_threadpool(svc.encode_text, texts)).tolist()}
        if kind.startswith("multipart/form-data"):
            form = await request.form()
            files = [f for f in form.getlist("images") if hasattr(f, "read")]
            if not files or len(files) > limits.max_texts:
                raise ApiError(422, f"images: upload 1 to {limits.max_texts} files as field 'images'")
            uploads = [(await f.read(limits.max_upload_bytes + 1), f.filename or "image") for f in files]
            return {"kind": "image", "embeddings": (await run_in_threadpool(svc.encode_images, uploads)).tolist()}
        raise ApiError(415, "send JSON {\"texts\": [...]} or multipart images")

    @app.api_route("/images/{item_id}", methods=["GET", "HEAD"])
    def thumbnail(item_id: int, request: Request, v: str | None = None) -> Response:
        """An item's thumbnail. Its URL carries the store's version (``?v=``), so a browser's cached copy
        never stands for the item of that id in another store; without it the ETag says the same."""
        if v is not None and v != svc.version:
            raise ApiError(404, f"item {item_id} is of another version of the store; search again")
        if not 0 <= item_id < len(svc.metadata):
            raise ApiError(404, f"no indexed item {item_id}")
        path = svc.metadata[item_id].get("path")
        if path is None:
            raise ApiError(404, f"item {item_id} is a text, not an image")
        headers = {"ETag": f'"{svc.version}-{item_id}"',
                   "Cache-Control": "max-age=3600" if v is not None else "no-cache"}  # no-cache: revalidate
        if headers["ETag"] in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=headers)
        try:
            img = _thumbnail(path, limits.thumbnail_size, f"item {item_id}")
            buf = io.BytesIO()
            _rgb_for_jpeg(img).save(buf, format="JPEG", quality=85)
        except (CliplabError, OSError, ValueError, SyntaxError):
            raise ApiError(404, f"item {item_id}: image no longer readable") from None
        return Response(buf.getvalue(), media_type="image/jpeg", headers=headers)

    return app
