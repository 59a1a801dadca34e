"""Celery's broker on the embedded default: kombu's filesystem transport, with messages that appear whole.

kombu's `filesystem` transport writes a message by creating `<ms>_<uuid>.<queue>.msg` in the queue folder
and then writing its JSON into it; the worker lists the folder, moves each matching file away and parses
it, without regard for the writer's advisory lock. When the worker looks between the create and the
write (a loaded machine: the web server, the bridge and beat all publish), it reads an empty file,
`json.loads` raises, and Celery stops the worker as an "unrecoverable error": the demo's rollouts then
stand still while the web server keeps answering. (The message was lost too.)

Here a message is written under a name the worker does not pick up and renamed into place when complete
(a rename is atomic within a folder), so the worker sees either nothing or the whole message. A file
that still cannot be read (left by another program, or damaged) is logged and dropped rather than
stopping the worker.
"""

from __future__ import annotations

import logging
import os
import uuid
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps

logger = logging.getLogger(__name__)


class Channel(filesystem.Channel):
    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:
        """Put `payload` on `queue`: written under a hidden name, renamed to the name the worker reads."""
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = os.path.join(self.data_folder_out, f".{name}.partial")  # "<name>.partial" after the first dot
        body = str_to_bytes(dumps(payload))
        try:
            with open(partial, "wb") as handle:
                handle.write(body)
            os.replace(partial, final)
        except OSError as exc:
            try:
                os.unlink(partial)
            except OSError:
                pass
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc

    def _get(self, queue: str) -> Any:
        """The next whole message of `queue`; an unreadable file is logged and skipped, not fatal."""
        while True:
            try:
                return super()._get(queue)
            except ValueError as exc:  # json.JSONDecodeError: the file is gone already (moved, then removed)
                logger.error("dropped an unreadable message of Celery queue %r: %s", queue, exc)


class Transport(filesystem.Transport):
    Channel = Channel
