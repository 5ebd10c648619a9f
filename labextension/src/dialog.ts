/**
 * One message after a death, not two. When the server restarts a dead kernel,
 * JupyterLab's notebook panel opens a "Kernel Restarting — The kernel … appears to
 * have died" modal (NotebookPanel, on the session's 'autorestarting' status), which
 * would cover our notification with the cause. For a kernel kernel-doctor supervises,
 * that dialog is resolved through the public Dialog API before it is attached (it is
 * never painted), and our notification says what it would have said, then why.
 * A kernel we do not supervise keeps the core dialog.
 */
import { Dialog } from '@jupyterlab/apputils';
import { NotebookPanel } from '@jupyterlab/notebook';
import { ITranslator, nullTranslator } from '@jupyterlab/translation';

export class CoreDeathDialog {
  /** Panels whose kernel just died under kernel-doctor: their core dialog goes. */
  private replacing = new Set<NotebookPanel>();

  constructor(private translator: ITranslator = nullTranslator) {
    Dialog.tracker.widgetAdded.connect((_, dialog) => {
      // The panel opens its dialog (constructs it, then launches it) in the same
      // status handler: resolve it once launched, before it is attached.
      void Promise.resolve().then(() => this.replaceIn([dialog]));
    });
  }

  /** The core's words for this panel's kernel death, as the panel says them. */
  words(panel: NotebookPanel): { body: string } {
    const trans = this.translator.load('jupyterlab');
    return {
      body: trans.__(
        'The kernel for %1 appears to have died. It will restart automatically.',
        panel.sessionContext.session?.path
      )
    };
  }

  /**
   * Called from our own 'autorestarting' handler, which runs after the panel's (it
   * connected first): its dialog exists by now, or is about to be added.
   */
  replace(panel: NotebookPanel): void {
    this.replacing.add(panel);
    const open: Dialog<unknown>[] = [];
    Dialog.tracker.forEach(dialog => {
      open.push(dialog);
    });
    this.replaceIn(open);
    // Later restarts of the same death go through 'restarting', which the panel
    // treats as the same series; a new death is a new 'autorestarting'.
    window.setTimeout(() => this.replacing.delete(panel), 5000);
  }

  private replaceIn(dialogs: Dialog<unknown>[]): void {
    for (const dialog of dialogs) {
      for (const panel of this.replacing) {
        // Its body says it (the title is rendered later, by React).
        const { body } = this.words(panel);
        if (!dialog.isDisposed && (dialog.node.textContent || '').includes(body)) {
          dialog.resolve(); // its one button, Ok: as if the user had read it
        }
      }
    }
  }
}
