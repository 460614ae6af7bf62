import { createHash } from 'node:crypto';

/**
 * The pages the links in the mails open. Static: the token stays in the URL's fragment, which the
 * browser never sends; the script reads it, drops it from the address bar and history, and posts
 * it (with the new password, on the reset page) to the JSON route of the same path when the user
 * confirms. Opening a page changes nothing, so a mail scanner that follows links spends no token.
 */
export interface Page {
  html: Buffer;
  /** Allows exactly this page's script and style (by hash), and requests to this origin. */
  csp: string;
}

const STYLE = 'body{font:16px/1.5 system-ui,sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem}input,button{font:inherit;padding:.4rem}';

/** One script for both pages: what to post and what to say when it worked comes from the form. */
const SCRIPT = `
const form = document.querySelector('form');
const status = document.getElementById('status');
const token = new URLSearchParams(location.hash.slice(1)).get('token');
history.replaceState(null, '', location.pathname + location.search);
if (!token) {
  form.hidden = true;
  status.textContent = 'This link has no token: open the link from the mail again.';
}
form.addEventListener('submit', async (event) => {
  event.preventDefault();
  const button = form.querySelector('button');
  button.disabled = true;
  const body = { token };
  if (form.elements.password) body.password = form.elements.password.value;
  try {
    const res = await fetch(location.pathname, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
    if (res.status === 204) {
      form.hidden = true;
      status.textContent = form.dataset.done;
      return;
    }
    const answer = await res.json().catch(() => ({}));
    status.textContent = answer.message || 'The server answered ' + res.status + '.';
  } catch {
    status.textContent = 'The server could not be reached; try again.';
  }
  button.disabled = false;
});
`;

const sha256 = (text: string) => `'sha256-${createHash('sha256').update(text).digest('base64')}'`;
const CSP = [
  "default-src 'none'",
  `script-src ${sha256(SCRIPT)}`,
  `style-src ${sha256(STYLE)}`,
  "connect-src 'self'",
  "form-action 'none'",
  "frame-ancestors 'none'",
  "base-uri 'none'",
].join('; ');

function page(title: string, form: string): Page {
  const html = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>${title} · Plexichat</title>
<style>${STYLE}</style>
</head>
<body>
<h1>${title}</h1>
${form}
<p id="status" role="status"></p>
<script>${SCRIPT}</script>
</body>
</html>
`;
  return { html: Buffer.from(html), csp: CSP };
}

export const VERIFY_EMAIL_PAGE = page(
  'Confirm your email address',
  '<form data-done="Your email address is confirmed. You can close this page."><button type="submit">Confirm</button></form>',
);

export const RESET_PASSWORD_PAGE = page(
  'Choose a new password',
  `<form data-done="Your password is changed, and every device was signed out: sign in again with the new password.">
<p><label>New password (8 to 128 characters)<br><input type="password" name="password" autocomplete="new-password" minlength="8" maxlength="128" required></label></p>
<p><button type="submit">Set password</button></p>
</form>`,
);
