import fs from 'node:fs';
import net from 'node:net';
import type { CapturedLog } from '../fixtures/log.ts';

/** A mail as a reader sees it: its headers and both bodies, decoded. */
export interface ParsedMail {
  headers: Map<string, string>;
  from: string;
  to: string;
  subject: string;
  text: string;
  html: string;
  /** The message as it was written or sent. */
  raw: string;
}

/**
 * Parses what the server writes: one part or a multipart/alternative of text and HTML, each
 * 7bit, quoted-printable or base64 (what nodemailer picks), in UTF-8.
 */
function parseMail(raw: string): ParsedMail {
  const { headers, body } = splitEntity(raw);
  let text = '';
  let html = '';
  const type = headers.get('content-type') ?? 'text/plain';
  const boundary = /boundary="?([^";]+)"?/i.exec(type)?.[1];
  const parts = boundary === undefined ? [{ headers, body }] : multipartParts(body, boundary).map(splitEntity);
  for (const part of parts) {
    const partType = (part.headers.get('content-type') ?? 'text/plain').toLowerCase();
    const decoded = decodeBody(part.body, part.headers.get('content-transfer-encoding'));
    if (partType.startsWith('text/plain')) text = decoded;
    else if (partType.startsWith('text/html')) html = decoded;
  }
  return {
    headers,
    from: headers.get('from') ?? '',
    to: headers.get('to') ?? '',
    subject: headers.get('subject') ?? '',
    text,
    html,
    raw,
  };
}

/** The token of that kind in the mail's text (`pxv_` verifies, `pxr_` resets); fails when there is not exactly one. */
export function tokenIn(mail: ParsedMail, prefix: 'pxv_' | 'pxr_'): string {
  const found = new Set(mail.text.match(new RegExp(`${prefix}[A-Za-z0-9_-]{43}`, 'g')) ?? []);
  if (found.size !== 1) throw new Error(`expected one ${prefix} token in the mail, found ${found.size}:\n${mail.text}`);
  return [...found][0] as string;
}

function splitEntity(raw: string): { headers: Map<string, string>; body: string } {
  const normalised = raw.replace(/\r\n/g, '\n');
  const end = normalised.indexOf('\n\n');
  const head = end === -1 ? normalised : normalised.slice(0, end);
  const headers = new Map<string, string>();
  for (const line of head.replace(/\n[ \t]+/g, ' ').split('\n')) {
    const colon = line.indexOf(':');
    if (colon > 0) headers.set(line.slice(0, colon).trim().toLowerCase(), line.slice(colon + 1).trim());
  }
  return { headers, body: end === -1 ? '' : normalised.slice(end + 2) };
}

function multipartParts(body: string, boundary: string): string[] {
  const delimiter = `--${boundary}`;
  return body
    .split(`\n${delimiter}`)
    .map((chunk, i) => (i === 0 ? chunk.replace(delimiter, '') : chunk))
    .filter((chunk) => !chunk.startsWith('--'))
    .map((chunk) => chunk.replace(/^\n/, ''))
    .filter((chunk) => chunk.trim() !== '');
}

function decodeBody(body: string, encoding: string | undefined): string {
  switch ((encoding ?? '7bit').toLowerCase()) {
    case 'quoted-printable':
      return Buffer.from(
        body.replace(/=\n/g, '').replace(/=([0-9A-F]{2})/gi, (_, hex: string) => String.fromCharCode(Number.parseInt(hex, 16))),
        'latin1',
      ).toString('utf8');
    case 'base64':
      return Buffer.from(body.replace(/\s+/g, ''), 'base64').toString('utf8');
    default:
      return body;
  }
}

/** The log line of each mail written to the outbox (server/mail/mailer.ts). */
export const OUTBOX_LINE = 'mail written to the outbox';

/**
 * Waits for a mail the server writes to its outbox, by the log line it writes for each (no
 * polling): the first of `kind` to `to` logged at or after `mark` (an index into `log.records`,
 * taken before the request that causes the mail). Resolves with the parsed file.
 */
export async function outboxMail(log: CapturedLog, mark: number, to: string, kind: string): Promise<ParsedMail & { file: string }> {
  for (;;) {
    const record = log.records.slice(mark).find((r) => r.msg === OUTBOX_LINE && r.to === to && r.kind === kind);
    if (record !== undefined) {
      const file = record.file as string;
      return { ...parseMail(fs.readFileSync(file, 'utf8')), file };
    }
    await log.next(OUTBOX_LINE);
  }
}

/** One message an SMTP client handed over. */
interface ReceivedMessage {
  from: string;
  to: string[];
  mail: ParsedMail;
}

export interface TestSmtpServer {
  /** `smtp://127.0.0.1:<port>` */
  url: string;
  received: ReceivedMessage[];
  /** The first message to `to` received (held or not) at or after index `mark` of `received`; waits for it. */
  message(mark: number, to: string): Promise<ReceivedMessage>;
  /** Messages whose DATA the server holds unanswered (with `hold`). */
  readonly held: number;
  /** Answers every held DATA (accepts the messages) and stops holding. */
  release(): void;
  close(): Promise<void>;
}

/**
 * Enough of an SMTP server (RFC 5321: EHLO, MAIL, RCPT, DATA, RSET, NOOP, QUIT; no TLS, no
 * auth) on port 0 for nodemailer to deliver to. `refuse` makes it answer the greeting with a
 * permanent failure, as a mail server that refuses us would. `hold` keeps each DATA unanswered,
 * as a slow mail server would, until `release()`: a test can then show a request was answered
 * before its mail was accepted.
 */
export async function startSmtpServer(options: { refuse?: boolean; hold?: boolean } = {}): Promise<TestSmtpServer> {
  const received: ReceivedMessage[] = [];
  const receivedListeners = new Set<() => void>();
  const heldAnswers: (() => void)[] = [];
  let holding = options.hold ?? false;
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => socket.destroy());
    socket.setEncoding('utf8');
    const reply = (line: string) => {
      if (!socket.destroyed) socket.write(`${line}\r\n`);
    };
    if (options.refuse) {
      reply('554 5.3.2 test server: not accepting mail');
      socket.end();
      return;
    }
    reply('220 test.invalid ESMTP test server');
    let buffer = '';
    let from = '';
    let to: string[] = [];
    let data: string[] | undefined;
    socket.on('data', (chunk: string) => {
      buffer += chunk;
      for (let end = buffer.indexOf('\r\n'); end !== -1; end = buffer.indexOf('\r\n')) {
        const line = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        if (data !== undefined) {
          if (line !== '.') {
            data.push(line.startsWith('..') ? line.slice(1) : line);
            continue;
          }
          received.push({ from, to, mail: parseMail(data.join('\r\n')) });
          data = undefined;
          for (const listener of receivedListeners) listener();
          const accept = () => reply('250 2.0.0 queued');
          if (holding) heldAnswers.push(accept);
          else accept();
          continue;
        }
        const verb = line.slice(0, 4).toUpperCase();
        if (verb === 'EHLO' || verb === 'HELO') reply('250 test.invalid');
        else if (verb === 'MAIL') {
          from = /<([^>]*)>/.exec(line)?.[1] ?? '';
          to = [];
          reply('250 2.1.0 ok');
        } else if (verb === 'RCPT') {
          to.push(/<([^>]*)>/.exec(line)?.[1] ?? '');
          reply('250 2.1.5 ok');
        } else if (verb === 'DATA') {
          data = [];
          reply('354 end with <CRLF>.<CRLF>');
        } else if (verb === 'RSET' || verb === 'NOOP') reply('250 2.0.0 ok');
        else if (verb === 'QUIT') {
          reply('221 2.0.0 bye');
          socket.end();
        } else reply('502 5.5.1 not implemented');
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  return {
    url: `smtp://127.0.0.1:${port}`,
    received,
    get held() {
      return heldAnswers.length;
    },
    message(mark, to) {
      const find = () => received.slice(mark).find((m) => m.to.includes(to));
      const found = find();
      if (found !== undefined) return Promise.resolve(found);
      return new Promise((resolve) => {
        const listener = () => {
          const message = find();
          if (message === undefined) return;
          receivedListeners.delete(listener);
          resolve(message);
        };
        receivedListeners.add(listener);
      });
    },
    release() {
      holding = false;
      for (const accept of heldAnswers.splice(0)) accept();
    },
    close() {
      for (const socket of sockets) socket.destroy();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}
