/** The package name every diagnostic and configuration error of this package starts with. */
export const PACKAGE = '@meshtrace/node';
