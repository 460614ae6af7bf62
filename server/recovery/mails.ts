import type { OutgoingMail } from '../mail/mailer.ts';

/**
 * Where the links of the mails lead: pages this server serves (routes.ts) which read the token
 * from the fragment and post it. In the fragment, the token never reaches a server's or a
 * proxy's access log, nor a `Referer`.
 */
export const VERIFY_EMAIL_PATH = '/auth/verify-email';
export const RESET_PASSWORD_PATH = '/auth/password/reset';

interface Link {
  publicUrl: string;
  token: string;
}

export function verificationMail(to: { username: string; email: string }, link: Link, lifetimeHours: number): OutgoingMail {
  const url = `${link.publicUrl}${VERIFY_EMAIL_PATH}#token=${link.token}`;
  return compose({
    kind: 'verify-email',
    to: to.email,
    subject: 'Confirm your email address for Plexichat',
    greeting: to.username,
    paragraphs: [`Confirm that ${to.email} is the email address of your Plexichat account:`],
    url,
    after: [
      `The link works once, for ${lifetimeHours} hours. An app may ask for this code instead:`,
      { code: link.token },
      'If you did not sign up or change your address on Plexichat, ignore this mail.',
    ],
  });
}

export function passwordResetMail(to: { username: string; email: string }, link: Link, lifetimeMinutes: number): OutgoingMail {
  const url = `${link.publicUrl}${RESET_PASSWORD_PATH}#token=${link.token}`;
  return compose({
    kind: 'reset-password',
    to: to.email,
    subject: 'Reset your Plexichat password',
    greeting: to.username,
    paragraphs: ['Someone asked to reset the password of your Plexichat account. To choose a new one, open:'],
    url,
    after: [
      `The link works once, for ${lifetimeMinutes} minutes, and setting a new password signs out every device. An app may ask for this code instead:`,
      { code: link.token },
      'If you did not ask for this, ignore this mail: your password stays as it is.',
    ],
  });
}

/** To the address an account just left: the owner learns of a change they may not have made. */
export function emailChangedMail(change: { username: string; previousEmail: string; email: string }, publicUrl: string): OutgoingMail {
  return compose({
    kind: 'email-changed',
    to: change.previousEmail,
    subject: 'Your Plexichat email address was changed',
    greeting: change.username,
    paragraphs: [
      `The email address of your Plexichat account on ${publicUrl} was changed to ${maskAddress(change.email)}. Mails about the account go there from now on.`,
      'If you did not make this change, someone else may be signed in to your account: ask the administrator of that server for help.',
    ],
    after: [],
  });
}

/** `j***@example.com`: enough for the owner to recognise, not a new address handed to whoever reads the old mailbox. */
function maskAddress(address: string): string {
  const at = address.lastIndexOf('@');
  return `${address.slice(0, Math.min(1, at))}***${address.slice(at)}`;
}

type Block = string | { code: string };

/** The same words as plain text and as HTML (every value escaped). */
function compose(mail: { kind: string; to: string; subject: string; greeting: string; paragraphs: string[]; url?: string; after: Block[] }): OutgoingMail {
  const text = [
    `Hi ${mail.greeting},`,
    ...mail.paragraphs,
    ...(mail.url === undefined ? [] : [mail.url]),
    ...mail.after.map((block) => (typeof block === 'string' ? block : `    ${block.code}`)),
  ].join('\n\n');
  const html = [
    `<p>Hi ${escapeHtml(mail.greeting)},</p>`,
    ...mail.paragraphs.map((p) => `<p>${escapeHtml(p)}</p>`),
    ...(mail.url === undefined ? [] : [`<p><a href="${escapeHtml(mail.url)}">${escapeHtml(mail.url)}</a></p>`]),
    ...mail.after.map((block) => (typeof block === 'string' ? `<p>${escapeHtml(block)}</p>` : `<p><code>${escapeHtml(block.code)}</code></p>`)),
  ].join('\n');
  return {
    kind: mail.kind,
    to: mail.to,
    subject: mail.subject,
    text: `${text}\n`,
    html: `<!doctype html>\n<html><body>\n${html}\n</body></html>\n`,
  };
}

function escapeHtml(value: string): string {
  return value.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}
