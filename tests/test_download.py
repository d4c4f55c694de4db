"""VOC download against a loopback HTTP server: verify + extract, resume (Range), md5 mismatch, offline."""
import hashlib
import io
import socket
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from yolo.data.download import VOC_ARCHIVES, Archive, DownloadError, download, main


class _Handler(BaseHTTPRequestHandler):
    """Serves ``server.files`` with HEAD, GET and single-range requests; ``server.cut`` truncates bodies."""

    def do_HEAD(self):
        self._respond(send_body=False)

    def do_GET(self):
        self._respond(send_body=True)

    def _respond(self, send_body: bool):
        self.server.requests.append((self.command, self.path, self.headers.get("Range")))
        data = self.server.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = int(self.headers["Range"].split("=")[1].split("-")[0]) if self.headers.get("Range") else 0
        if start >= len(data):
            self.send_error(416)
            return
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        if send_body:
            body = data[start:]
            self.wfile.write(body[: self.server.cut] if self.server.cut else body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.files, httpd.requests, httpd.cut = {}, [], None
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _tiny_voc_tar() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, text in [("VOCdevkit/VOC2007/ImageSets/Main/test.txt", b"000001\n"),
                           ("VOCdevkit/VOC2007/Annotations/000001.xml", b"<annotation/>" + bytes(3000))]:
            info = tarfile.TarInfo(name)
            info.size = len(text)
            tar.addfile(info, io.BytesIO(text))
    return buffer.getvalue()


def _archive(server, data: bytes, md5: str | None = None) -> Archive:
    server.files["/VOCtest_tiny.tar"] = data
    url = f"http://127.0.0.1:{server.server_address[1]}/VOCtest_tiny.tar"
    return Archive("VOCtest_tiny.tar", url, md5 or hashlib.md5(data).hexdigest())


def test_download_verifies_and_extracts(server, tmp_path):
    data = _tiny_voc_tar()
    devkit = download(tmp_path / "data", archives=[_archive(server, data)])
    assert (devkit / "VOC2007" / "ImageSets" / "Main" / "test.txt").read_text() == "000001\n"
    assert (tmp_path / "data" / "VOCtest_tiny.tar").read_bytes() == data
    assert not list((tmp_path / "data").glob("*.part"))
    assert [r[0] for r in server.requests] == ["HEAD", "GET"]


def test_mirror_replaces_the_host(server, tmp_path):
    data = _tiny_voc_tar()
    archive = Archive("VOCtest_tiny.tar", "http://unreachable.invalid/x/VOCtest_tiny.tar",
                      hashlib.md5(data).hexdigest())
    server.files["/mirror/VOCtest_tiny.tar"] = data
    download(tmp_path, archives=[archive], mirror=f"http://127.0.0.1:{server.server_address[1]}/mirror/")
    assert (tmp_path / "VOCdevkit" / "VOC2007").is_dir()


def test_interrupted_download_keeps_part_and_resumes_with_range(server, tmp_path):
    data = _tiny_voc_tar()
    archive = _archive(server, data)
    server.cut = 4000
    with pytest.raises(DownloadError, match="run the same command again to resume"):
        download(tmp_path, archives=[archive])
    part = tmp_path / "VOCtest_tiny.tar.part"
    assert part.read_bytes() == data[:4000] and not (tmp_path / "VOCtest_tiny.tar").exists()
    server.cut, server.requests[:] = None, []
    download(tmp_path, archives=[archive])
    assert ("GET", "/VOCtest_tiny.tar", "bytes=4000-") in server.requests
    assert (tmp_path / "VOCtest_tiny.tar").read_bytes() == data and not part.exists()


def test_md5_mismatch_leaves_no_file(server, tmp_path):
    archive = _archive(server, _tiny_voc_tar(), md5="0" * 32)
    with pytest.raises(DownloadError, match="does not match the expected 0000"):
        download(tmp_path, archives=[archive])
    assert list(tmp_path.iterdir()) == []


def test_offline_fails_at_once_naming_the_files(tmp_path, capsys):
    with socket.socket() as probe:          # a free port nobody listens on: connection refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mirror = f"http://127.0.0.1:{port}"
    root = tmp_path / "data"
    with pytest.raises(DownloadError) as error:
        download(root, mirror=mirror, timeout=2)
    message = str(error.value)
    assert "cannot reach" in message and str(root.resolve()) in message
    assert all(a.filename in message and a.md5 in message for a in VOC_ARCHIVES)
    assert not root.exists()                                   # nothing written, nothing left behind
    assert main(["--root", str(root), "--mirror", mirror, "--timeout", "2"]) == 1
    assert "put them in" in capsys.readouterr().err


def test_archives_already_present_are_verified_not_downloaded(tmp_path):
    data = _tiny_voc_tar()
    (tmp_path / "VOCtest_tiny.tar").write_bytes(data)
    archive = Archive("VOCtest_tiny.tar", "http://127.0.0.1:9/VOCtest_tiny.tar",
                      hashlib.md5(data).hexdigest())
    download(tmp_path, archives=[archive], timeout=2)          # no server: must not need one
    assert (tmp_path / "VOCdevkit" / "VOC2007" / "Annotations" / "000001.xml").is_file()
    (tmp_path / "VOCtest_tiny.tar").write_bytes(data[:-10])
    with pytest.raises(DownloadError, match="md5 is not"):
        download(tmp_path, archives=[archive], timeout=2)
    assert (tmp_path / "VOCtest_tiny.tar").read_bytes() == data[:-10]     # the user's file is left alone


def test_archive_escaping_the_root_is_refused(server, tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(DownloadError, match="refusing to extract"):
        download(tmp_path / "root", archives=[_archive(server, buffer.getvalue())])
    assert not (tmp_path / "escaped.txt").exists()
